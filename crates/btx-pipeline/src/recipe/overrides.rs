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
        .ok_or_else(|| {
            anyhow!("--set {set:?}: expected key.path=value\nhint: e.g. --set train.steps=100 or --set data.prepare.domains.0.docs=300")
        })?;
    let value = parse_value(raw.trim());
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {set:?}: empty key in {path:?}\nhint: keys are joined by single dots, e.g. optim.lr");
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
                    anyhow!("--set {set:?}: index {i} out of range (array has {n})\nhint: arrays of tables are indexed from 0")
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
                anyhow!("--set {set:?}: index {i} out of range (array has {n})\nhint: arrays of tables are indexed from 0")
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
            let text = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "reading config {}\nhint: check the path (examples/ holds configs to start from)",
                    p.display()
                )
            })?;
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
    if let Some(key) = non_finite(&root, "") {
        bail!(
            "{what}: {key} is not a finite number\nhint: every number in a config is finite (nan and inf would reach the weights as NaN)"
        );
    }
    let cfg = T::deserialize(root.clone()).map_err(|e| {
        // toml's message spans lines ("...\nin `optim`\n"): one line, then the hint.
        let mut e = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        // A section that nests another one's keys (`[experts]` holding `[experts.train]`)
        // names only itself: say where the unknown key is.
        if let Some(key) = e
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            let paths = key_paths(&root, key, "");
            if !paths.is_empty() {
                e = format!("{e} (at {})", paths.join(", "));
            }
        }
        anyhow!("{what}: {e}\nhint: check the key's name and its value's type against the examples/ configs and the README (unknown keys are refused by name)")
    })?;
    Ok((cfg, root))
}

/// The dotted paths of every key named `key` in `v`.
fn key_paths(v: &Value, key: &str, at: &str) -> Vec<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::Table(t) => t
            .iter()
            .flat_map(|(k, x)| {
                let mut here = key_paths(x, key, &join(k));
                if k == key {
                    here.insert(0, format!("`{}`", join(k)));
                }
                here
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .flat_map(|(i, x)| key_paths(x, key, &join(&i.to_string())))
            .collect(),
        _ => vec![],
    }
}

/// The dotted key of the first float in `v` that is NaN or infinite.
fn non_finite(v: &Value, at: &str) -> Option<String> {
    let key = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::Float(f) if !f.is_finite() => Some(at.to_string()),
        Value::Table(t) => t.iter().find_map(|(k, x)| non_finite(x, &key(k))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| non_finite(x, &key(&i.to_string()))),
        _ => None,
    }
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

    #[test]
    fn an_unknown_key_is_named_with_where_it_is() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Inner {
            #[allow(dead_code)]
            #[serde(default)]
            steps: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Flat {
            #[allow(dead_code)]
            #[serde(default)]
            train: Option<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Outer {
            #[allow(dead_code)]
            #[serde(flatten)]
            flat: Flat,
        }
        let e = load_str::<Outer>("[train]\nstepz = 1\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `stepz`") && e.contains("(at `train.stepz`)"),
            "{e}"
        );
        let e = load_str::<Outer>("trian = 1\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(at `trian`)"), "{e}");
    }

    #[test]
    fn non_finite_numbers_are_refused_by_key() {
        #[derive(serde::Deserialize)]
        struct Any {
            #[allow(dead_code)]
            a: toml::Table,
        }
        for set in ["a.w.math=nan", "a.x=inf", "a.list=[1.0, -inf]"] {
            let e = load_str::<Any>("[a]\nx = 1.0\n", "c.toml", &[set.into()])
                .err()
                .unwrap()
                .to_string();
            let key = set.split('=').next().unwrap();
            assert!(
                e.contains("not a finite number") && e.contains("hint"),
                "{e}"
            );
            assert!(e.contains(key.trim_end_matches(".math")), "{set}: {e}");
        }
    }
}
