//! The workspace's module graph has no import circles (issue 21): in every crate, following
//! `use crate::…`, `super::…`, `self::…` and a module's `use child::…` from file to file never
//! comes back to where it started. Test code (`#[cfg(test)]` onwards) and comments are left out;
//! a name re-exported at the crate root counts as a reference to the module that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every `.rs` file under `src` as its module path (`a/b.rs` and `a/b/mod.rs` are `a::b`; the
/// crate root is `[]`). Binaries' `main.rs` is a root of its own and left out.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut m: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect();
                if m == ["main"] {
                    continue;
                }
                if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
                    m.pop();
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// A file's code without its tests and comments.
fn code(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap();
    let s = s.split("#[cfg(test)]").next().unwrap();
    s.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file refers to: (anchor, segments), with `{a, b::c}` groups expanded one level.
fn references(code: &str) -> Vec<(String, Vec<String>)> {
    let b = code.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !is_ident(b[i - 1] as char) && b[i - 1] != b':';
        let rest = &code[i..];
        let anchor = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|a| rest.starts_with(a));
        // `use child::…` (a bare path at the start of a use statement).
        let bare = rest
            .strip_prefix("use ")
            .filter(|r| r.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter(|r| {
                !["crate::", "super::", "self::"]
                    .iter()
                    .any(|a| r.starts_with(a))
            });
        let (anchor, mut j) = match (starts_word, anchor, bare) {
            (true, Some(a), _) => (a.trim_end_matches(':').to_string(), i + a.len()),
            (true, None, Some(_)) => ("bare".to_string(), i + 4),
            _ => {
                i += 1;
                continue;
            }
        };
        let mut segs = vec![];
        let mut grouped = false;
        loop {
            let s = j;
            while j < code.len() && is_ident(b[j] as char) {
                j += 1;
            }
            if j > s {
                segs.push(code[s..j].to_string());
            }
            if code[j..].starts_with("::") {
                j += 2;
                if code[j..].starts_with("super::") && segs.iter().all(|x| x == "super") {
                    continue;
                }
                if code[j..].starts_with('{') {
                    // A group: split at top-level commas.
                    let mut depth = 0;
                    let mut k = j;
                    let mut item = String::new();
                    let mut items = vec![];
                    while k < code.len() {
                        let c = b[k] as char;
                        match c {
                            '{' => {
                                depth += 1;
                                if depth > 1 {
                                    item.push(c)
                                }
                            }
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    items.push(std::mem::take(&mut item));
                                    break;
                                }
                                item.push(c);
                            }
                            ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                            _ => item.push(c),
                        }
                        k += 1;
                    }
                    for it in items {
                        let path: Vec<String> = it
                            .split(" as ")
                            .next()
                            .unwrap()
                            .split("::")
                            .map(|x| x.trim().to_string())
                            .take_while(|x| !x.is_empty() && x.chars().all(is_ident))
                            .filter(|x| x != "self")
                            .collect();
                        let mut full = segs.clone();
                        full.extend(path);
                        out.push((anchor.clone(), full));
                    }
                    j = k;
                    grouped = true;
                    break;
                }
                continue;
            }
            break;
        }
        if !grouped && (!segs.is_empty() || anchor != "bare") {
            out.push((anchor, segs));
        }
        i = j.max(i + 1);
    }
    out
}

/// The modules of one crate and the modules each refers to.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    // Names the crate root re-exports (`pub use a::b::{X, Y}`), to the module they come from.
    let mut reexports: BTreeMap<String, Module> = BTreeMap::new();
    if let Some(root) = mods.get(&vec![]) {
        for (anchor, path) in references(&code(root)) {
            if anchor == "bare" && path.len() >= 2 {
                let m = path[..path.len() - 1].to_vec();
                if mods.contains_key(&m) {
                    reexports.insert(path.last().unwrap().clone(), m);
                }
            }
        }
    }
    let resolve = |segs: &[String]| -> Option<Module> {
        for n in (1..=segs.len()).rev() {
            if mods.contains_key(&segs[..n]) {
                return Some(segs[..n].to_vec());
            }
        }
        segs.first().and_then(|s| reexports.get(s).cloned())
    };
    let mut g = BTreeMap::new();
    for (m, p) in &mods {
        let is_dir = p.ends_with("mod.rs") || p.ends_with("lib.rs");
        let mut to = BTreeSet::new();
        for (anchor, path) in references(&code(p)) {
            // The crate root's `pub use`s are its facade, not code that depends on anything.
            if m.is_empty() && anchor == "bare" {
                continue;
            }
            let mut base: Module = match anchor.as_str() {
                "crate" => vec![],
                // `super` of `a/b.rs` and of `a/b/mod.rs` is `a`.
                "super" => m[..m.len().saturating_sub(1)].to_vec(),
                "self" | "bare" if is_dir => m.clone(),
                // `self` in a leaf file is the file; a bare `use x::` there names a crate.
                "self" => m.clone(),
                _ => continue,
            };
            let mut path = path.as_slice();
            while path.first().is_some_and(|s| s == "super") {
                base.pop();
                path = &path[1..];
            }
            base.extend(path.iter().cloned());
            if let Some(t) = resolve(&base) {
                if &t != m {
                    to.insert(t);
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

/// A cycle through the graph, if there is one (depth-first search with colours).
fn find_cycle(g: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn dfs(
        v: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in &g[v] {
            match state.get(w).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = dfs(w, g, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let at = stack.iter().position(|x| x == w).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(w.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(v, g, &mut state, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

fn show(c: &[Module]) -> String {
    c.iter()
        .map(|m| {
            if m.is_empty() {
                "<root>".to_string()
            } else {
                m.join("::")
            }
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_crate_has_an_import_circle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = 0;
    let mut cycles = vec![];
    for e in std::fs::read_dir(&crates).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let g = graph(&src);
        seen += g.len();
        if let Some(c) = find_cycle(&g) {
            cycles.push(format!("{}: {}", src.display(), show(&c)));
        }
    }
    assert!(
        seen > 50,
        "only {seen} modules found under {}",
        crates.display()
    );
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

/// The scanner itself: a circle through a `super::{…}` group and a crate-root re-export is
/// found, and a parent declaring a child that uses a sibling is not a circle.
#[test]
fn the_scanner_finds_a_circle_through_groups_and_reexports() {
    let d = std::env::temp_dir().join(format!("btx-arch-{}", std::process::id()));
    let w = |p: &str, s: &str| {
        let p = d.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("src/lib.rs", "pub mod a;\npub mod b;\npub use a::Thing;\n");
    w(
        "src/a/mod.rs",
        "pub mod leaf;\nuse leaf::f;\npub struct Thing;\n",
    );
    w(
        "src/a/leaf.rs",
        "use super::super::b::{g, h as k};\n// use crate::a::Thing; (a comment)\n",
    );
    w("src/b.rs", "pub fn g() { let _ = crate::Thing; }\n");
    let g = graph(&d.join("src"));
    let c = find_cycle(&g).unwrap_or_else(|| panic!("a -> a::leaf -> b -> a in {g:?}"));
    assert_eq!(
        show(&c[..c.len() - 1]).matches("->").count(),
        2,
        "{}",
        show(&c)
    );
    // Without b's use of the re-export there is none.
    w("src/b.rs", "pub fn g() {}\n");
    assert_eq!(find_cycle(&graph(&d.join("src"))), None);
    std::fs::remove_dir_all(&d).unwrap();
}
