//! The workspace's structural rules (docs/architecture.md), checked on the
//! source itself so they hold after every change, not only the day they were
//! written:
//!
//! - `crypto` uses nothing of Confide's; `proto` only `crypto`; the
//!   coordinator library never the client.
//! - No import cycle between the files of one crate (test code excluded:
//!   a test may reach anywhere).
//! - No source file over 600 lines, except generated code, the one SIMD
//!   module and test files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
/// Files allowed past [`MAX_LINES`]: the SIMD kernels are one unit with their
/// portable twins.
const LONG_FILES_ALLOWED: &[&str] = &["crypto/src/simd.rs"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.contains("/tests/") || rel.contains("/benches/")
}

/// The non-test part of a file: everything before its first `#[cfg(test)]`.
fn production_part(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Module path of a source file under `src/` (`a/b.rs` and `a/b/mod.rs` are
/// `a::b`; `lib.rs` and `main.rs` are the root, written as an empty path).
fn module_of(src_rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = src_rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if !matches!(stem.as_str(), "mod" | "lib" | "main") {
            parts.push(stem);
        }
    }
    parts
}

/// Paths named by a `use` tree: `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand_use_tree(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = tree[open + 1..].trim_end().trim_end_matches('}');
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .flat_map(expand_use_tree)
        .map(|s| {
            if s == "self" {
                prefix.to_string()
            } else if prefix.is_empty() {
                s
            } else {
                format!("{prefix}::{s}")
            }
        })
        .collect()
}

/// Every `crate::…` / `super::…` path a file's production code names,
/// resolved to absolute segment lists. `pub use` lines are re-exports (a
/// facade, not a dependency) and are skipped.
fn referenced_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    // `super` is the parent module, for `a/b.rs` and `a/b/mod.rs` alike.
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    let mut raw = Vec::new();
    let mut stmt = String::new();
    let mut in_use = false;
    for line in code.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if !in_use && (t.starts_with("use ") || t.starts_with("pub(crate) use ")) {
            in_use = true;
            stmt.clear();
        }
        if in_use {
            stmt.push_str(t);
            stmt.push(' ');
            if t.ends_with(';') {
                in_use = false;
                let body = stmt
                    .trim()
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("use ")
                    .trim_end_matches(';')
                    .to_string();
                raw.extend(expand_use_tree(&body));
            }
            continue;
        }
        // Inline paths such as `crate::checkpoint::save(..)`.
        for key in ["crate::", "super::"] {
            let mut rest = t;
            while let Some(i) = rest.find(key) {
                let before = rest[..i].chars().last();
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(tail.len());
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    raw.push(tail[..end].to_string());
                }
                rest = &tail[end.max(key.len())..];
            }
        }
    }
    raw.into_iter()
        .filter_map(|p| {
            let segs: Vec<String> = p
                .split("::")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let (first, rest) = segs.split_first()?;
            let mut base = match first.as_str() {
                "crate" => Vec::new(),
                "super" => parent.clone(),
                "self" => module.to_vec(),
                _ => return None,
            };
            let mut rest = rest.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest.remove(0);
            }
            base.extend(rest);
            Some(base)
        })
        .collect()
}

struct CrateFiles {
    name: String,
    /// module path → (relative file name, production code)
    modules: BTreeMap<Vec<String>, (String, String)>,
}

fn crate_files(root: &Path, krate: &str, src: &str) -> CrateFiles {
    let src_dir = root.join(krate).join(src);
    let mut files = Vec::new();
    rust_files(&src_dir, &mut files);
    let mut modules = BTreeMap::new();
    for f in files {
        let Ok(rel) = f.strip_prefix(&src_dir) else {
            continue;
        };
        let rel_s = format!("{krate}/{src}/{}", rel.display());
        // The binary and its own modules (`src/main/`) are not the library.
        if is_test_file(&rel_s) || rel_s.ends_with("src/main.rs") || rel_s.contains("/src/main/") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap_or_default();
        modules.insert(module_of(rel), (rel_s, production_part(&text).to_string()));
    }
    CrateFiles {
        name: krate.to_string(),
        modules,
    }
}

/// File-to-file dependency edges of one crate (the root file excluded: it is
/// the crate's facade).
fn edges(c: &CrateFiles) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, (file, code)) in &c.modules {
        if module.is_empty() {
            continue;
        }
        for path in referenced_paths(module, code) {
            // Longest prefix of the path that is a module with its own file.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| c.modules.contains_key(p));
            if let Some(t) = target
                && &t != module
                && let Some((tfile, _)) = c.modules.get(&t)
            {
                out.entry(file.clone()).or_default().insert(tfile.clone());
            }
        }
    }
    out
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cyc = stack[start..].to_vec();
                    cyc.push(m.clone());
                    return Some(cyc);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

const CRATES: &[&str] = &["crypto", "proto", "coordinator", "client"];

#[test]
fn no_import_cycles_between_the_files_of_a_crate() {
    let root = workspace();
    let mut cycles = Vec::new();
    for krate in CRATES {
        let c = crate_files(&root, krate, "src");
        assert!(c.modules.len() > 3, "{krate}: sources not found");
        if let Some(cyc) = find_cycle(&edges(&c)) {
            cycles.push(format!("{}: {}", c.name, cyc.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let mut modules = BTreeMap::new();
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    modules.insert(Vec::new(), ("x/src/lib.rs".into(), "mod a; mod b;".into()));
    modules.insert(
        m("a"),
        (
            "x/src/a.rs".into(),
            "use crate::b::{Thing, other::X};".into(),
        ),
    );
    modules.insert(
        m("b"),
        ("x/src/b/mod.rs".into(), "fn f() { super::a::g() }".into()),
    );
    modules.insert(m("b::other"), ("x/src/b/other.rs".into(), "".into()));
    let c = CrateFiles {
        name: "x".into(),
        modules,
    };
    let g = edges(&c);
    assert!(g["x/src/a.rs"].contains("x/src/b/mod.rs"));
    assert!(g["x/src/a.rs"].contains("x/src/b/other.rs"));
    assert!(find_cycle(&g).is_some());
}

#[test]
fn lower_layers_do_not_use_higher_ones() {
    let root = workspace();
    let rules: &[(&str, &[&str])] = &[
        (
            "crypto",
            &["confide_proto", "confide_coordinator", "confide_client"],
        ),
        ("proto", &["confide_coordinator", "confide_client"]),
    ];
    let mut found = Vec::new();
    for (krate, banned) in rules {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        rust_files(&root.join(krate).join("tests"), &mut files);
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            for b in *banned {
                if text.contains(&format!("{b}::")) || text.contains(&format!("use {b}")) {
                    found.push(format!("{} uses {b}", f.display()));
                }
            }
        }
        let manifest = fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap_or_default();
        for dep in ["confide-proto", "confide-coordinator", "confide-client"] {
            if *krate == "proto" && dep == "confide-proto" {
                continue;
            }
            if manifest.contains(&format!("{dep} =")) || manifest.contains(&format!("{dep}\" ")) {
                found.push(format!("{krate}/Cargo.toml depends on {dep}"));
            }
        }
    }
    // The coordinator library (everything but the binary's demo) never uses the client.
    let c = crate_files(&root, "coordinator", "src");
    for (file, code) in c.modules.values() {
        if code.contains("confide_client") {
            found.push(format!("{file} (coordinator library) uses confide_client"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_source_file_is_over_600_lines() {
    let root = workspace();
    let mut long = Vec::new();
    for krate in CRATES.iter().chain(&["tests"]) {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(&root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if is_test_file(&rel) || LONG_FILES_ALLOWED.contains(&rel.as_str()) {
                continue;
            }
            let lines = fs::read_to_string(&f)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines > MAX_LINES {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
