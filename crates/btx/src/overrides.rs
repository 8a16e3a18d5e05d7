//! TOML config files with `--set a.b=value` overrides, applied before deserialising so that
//! unknown keys are rejected by name either way.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use toml::Value;

/// Applies one `key.path=value` override. The value is parsed as a TOML literal (number, bool,
/// string in quotes, array, inline table); anything that does not parse is taken as a string.
pub fn apply(root: &mut Value, set: &str) -> Result<()> {
    let (path, raw) = set
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {set:?}: expected key.path=value"))?;
    let value = parse_value(raw.trim());
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {set:?}: empty key in {path:?}");
    }
    let mut cur = root;
    for k in &keys[..keys.len() - 1] {
        cur = match cur {
            // Arrays of tables (e.g. [[data.prepare.domains]]) are indexed by number.
            Value::Array(a) => {
                let i: usize = k.parse().map_err(|_| {
                    anyhow!("--set {set:?}: {k:?} indexes an array, expected a number")
                })?;
                let n = a.len();
                a.get_mut(i).ok_or_else(|| {
                    anyhow!("--set {set:?}: index {i} out of range (array has {n})")
                })?
            }
            Value::Table(t) => t
                .entry(k.to_string())
                .or_insert_with(|| Value::Table(Default::default())),
            _ => bail!("--set {set:?}: {k:?} is inside a non-table value"),
        };
    }
    let last = keys[keys.len() - 1];
    match cur {
        Value::Table(t) => {
            t.insert(last.to_string(), value);
        }
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| anyhow!("--set {set:?}: {last:?} indexes an array"))?;
            let n = a.len();
            *a.get_mut(i).ok_or_else(|| {
                anyhow!("--set {set:?}: index {i} out of range (array has {n})")
            })? = value;
        }
        _ => bail!("--set {set:?}: parent of the last key is not a table"),
    }
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

/// Reads a TOML file (or starts empty with `None`), applies overrides, deserialises.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, sets: &[String]) -> Result<(T, Value)> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            load_str(&text, &p.display().to_string(), sets)
        }
        None => load_str("", "the config", sets),
    }
}

/// [`load`] of a config held in memory (`what` names it in errors).
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    what: &str,
    sets: &[String],
) -> Result<(T, Value)> {
    let mut root = text
        .parse::<toml::Table>()
        .map(Value::Table)
        .with_context(|| format!("{what} is not valid TOML"))?;
    for s in sets {
        apply(&mut root, s)?;
    }
    let cfg = T::deserialize(root.clone()).map_err(|e| {
        anyhow!("{what}: {e}\nhint: keys are checked by name; see the examples/ configs and the README for each section's keys")
    })?;
    Ok((cfg, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_typed_values() {
        let mut v: Value = "[a]\nx = 1\n"
            .parse::<toml::Table>()
            .map(Value::Table)
            .unwrap();
        apply(&mut v, "a.x=2.5").unwrap();
        apply(&mut v, "a.b.c=true").unwrap();
        apply(&mut v, "name=hello world").unwrap();
        apply(&mut v, "list=[1, 2]").unwrap();
        apply(&mut v, "list.1=5").unwrap();
        assert_eq!(v["list"][1].as_integer(), Some(5));
        assert!(apply(&mut v, "list.7=5").is_err());
        assert_eq!(v["a"]["x"].as_float(), Some(2.5));
        assert_eq!(v["a"]["b"]["c"].as_bool(), Some(true));
        assert_eq!(v["name"].as_str(), Some("hello world"));
        assert_eq!(v["list"].as_array().unwrap().len(), 2);
        assert!(apply(&mut v, "novalue").is_err());
    }
}
