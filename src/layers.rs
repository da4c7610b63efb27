//! The layers stay visible: `tether-core` (the rules without I/O) takes no runtime or binding as a
//! dependency, and no two modules of either crate import each other, directly or around a circle. A
//! module that needs something of a sibling that needs it back is a sign that a type belongs lower
//! (in the parent, or in the core).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, as its module path (`ws::frame`; `crate` for lib.rs).
fn modules(dir: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("readable source dir") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under root").with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                let name = if parts.is_empty() { "crate".to_string() } else { parts.join("::") };
                let text = std::fs::read_to_string(&path).expect("readable source");
                // a module's own tests may reach anywhere
                let text = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.insert(name, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The module a path names (`crate::ws::frame::Decoder` -> `ws::frame`), from module `from`.
fn resolve(mods: &BTreeMap<String, String>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from == "crate" { vec![] } else { from.split("::").collect() };
    match segs.first().copied() {
        Some("crate") => base.clear(),
        Some("super") => {
            while segs.first() == Some(&"super") {
                base.pop();
                segs.remove(0);
            }
            segs.insert(0, "_");
        }
        Some("self") => {}
        _ => return None,
    }
    segs.remove(0);
    (0..=segs.len()).rev().map(|n| [base.as_slice(), &segs[..n]].concat().join("::")).find(|m| mods.contains_key(m))
}

/// Import edges between modules that are not each other's ancestors (a child always reaches up to its
/// parent's items, and the parent declares the child).
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in mods {
        let mut targets = BTreeSet::new();
        for (i, _) in text.match_indices("::") {
            // the whole path this `::` belongs to
            let start = text[..i].rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).map_or(0, |s| s + 1);
            let end = i + text[i..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(0);
            let path = &text[start..end];
            if path.starts_with("crate::") || path.starts_with("super::") || path.starts_with("self::") {
                if let Some(t) = resolve(mods, m, path) {
                    let related = t == *m || m.starts_with(&format!("{t}::")) || t.starts_with(&format!("{m}::"));
                    if !related && t != "crate" {
                        targets.insert(t);
                    }
                }
            }
        }
        out.insert(m.clone(), targets);
    }
    out
}

/// Groups of modules that import each other around a circle (Tarjan's strongly connected components).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct S<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = vec![];
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = S { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_two_modules_import_each_other_around_a_circle() {
    for dir in [root().join("src"), root().join("crates/tether-core/src")] {
        let mods = modules(&dir);
        assert!(mods.len() > 5, "{} modules under {}", mods.len(), dir.display());
        let found = circles(&edges(&mods));
        assert!(found.is_empty(), "import circles under {}: {found:?}", dir.display());
    }
}

/// Imports from the modules under `folder` to modules outside it (its ancestors aside, as in `edges`).
fn leaving(mods: &BTreeMap<String, String>, folder: &str) -> Vec<(String, String)> {
    let inside = |m: &str| m == folder || m.starts_with(&format!("{folder}::"));
    edges(mods)
        .into_iter()
        .filter(|(m, _)| inside(m))
        .flat_map(|(m, ts)| ts.into_iter().filter(|t| !inside(t)).map(move |t| (m.clone(), t)))
        .collect()
}

#[test]
fn the_async_bridge_uses_nothing_of_the_other_bindings() {
    // its contract (py/bridge/mod.rs) is about threads, locks and cancellation alone: a binding type
    // in it would bring that binding's locks and Python calls into every awaitable
    let mods = modules(&root().join("src"));
    assert!(mods.contains_key("py::bridge::coroutine"), "the bridge moved: {:?}", mods.keys().collect::<Vec<_>>());
    assert_eq!(leaving(&mods, "py::bridge"), vec![]);
}

/// The `tether.*` Python modules the bindings import: `import("tether.x")` or `import(py, "tether.x", ...)`
/// (a `PyOnceLock`'s). A class's `module` string (where Python shows it) is no import.
fn python_modules_named(mods: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for text in mods.values() {
        for (i, _) in text.match_indices("\"tether.") {
            let before = text[..i].trim_end();
            let before = before.strip_suffix("py,").map(str::trim_end).unwrap_or(before);
            if !before.ends_with("import(") {
                continue;
            }
            let name: String =
                text[i + 1..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect();
            if name != "tether._native" {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn the_bindings_import_python_only_where_their_module_doc_says_python_implements_it() {
    let mods = modules(&root().join("src/py"));
    // the places py/mod.rs names, as "//! - `tether.x` (...)"
    let doc = &mods["crate"];
    let named: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("//! - `"))
        .filter_map(|l| l.split('`').next())
        .filter(|m| m.starts_with("tether."))
        .map(str::to_string)
        .collect();
    assert!(!named.is_empty(), "py/mod.rs names no place where Python implements the behaviour");
    let imported = python_modules_named(&mods);
    for m in &named {
        assert!(imported.contains(m), "py/mod.rs names {m}, which no binding imports any more");
    }
    let unnamed: Vec<&String> = imported.iter().filter(|m| !named.contains(*m)).collect();
    assert!(unnamed.is_empty(), "imported from Rust, yet not named in py/mod.rs as Python's to implement: {unnamed:?}");
}

#[test]
fn the_circle_check_can_fail() {
    let mods: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::X;".to_string()),
        ("b".to_string(), "use super::a::Y;".to_string()),
        ("c".to_string(), "use crate::a::Y;".to_string()),
    ]
    .into();
    assert_eq!(circles(&edges(&mods)), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn the_folder_check_can_fail() {
    let mods: BTreeMap<String, String> = [
        ("p".to_string(), String::new()),
        ("p::b".to_string(), String::new()),
        (
            "p::b::c".to_string(),
            "use super::super::with_gate; use super::super::events::Stream; use super::d::X;".to_string(),
        ),
        ("p::b::d".to_string(), String::new()),
        ("p::events".to_string(), "use super::b::c::Y;".to_string()),
    ]
    .into();
    assert_eq!(leaving(&mods, "p::b"), vec![("p::b::c".to_string(), "p::events".to_string())]);
}

#[test]
fn the_core_takes_no_runtime_or_binding() {
    let manifest = std::fs::read_to_string(root().join("crates/tether-core/Cargo.toml")).expect("its manifest");
    let deps = manifest.split("[dependencies]").nth(1).unwrap_or("");
    for banned in ["tokio", "pyo3", "futures", "async-std", "smol"] {
        let named = deps.lines().any(|l| l.trim_start().starts_with(banned));
        assert!(!named, "tether-core depends on {banned}: its modules must stay without I/O");
    }
}
