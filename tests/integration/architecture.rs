//! ARCHITECTURE.md's rules about the code itself, checked: no two modules import each
//! other (directly or through others), every file opens with a `//!` line, and the map
//! names every file under `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate: `["sink", "webhook"]`; the crate root is empty.
type Module = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` (the binary's `main.rs` included).
fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src_dir(), &mut files);
    files.sort();
    files
}

/// The module a library file defines (None for the binary's `main.rs`).
fn module_of(file: &Path) -> Option<Module> {
    let relative = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> =
        relative.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => return Some(Vec::new()),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts)
}

/// The code of a file without comments, string and character literals, and
/// `#[cfg(test)]` modules (test code is not part of the build's module graph).
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !is_ident(chars.get(i.wrapping_sub(1)))
        {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: skip to its closing quote.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    strip_test_modules(&out)
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

fn strip_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let Some(open) = out[at..].find('{').map(|o| at + o) else { break };
        // Only a module (or item) whose body follows: skip to its matching brace.
        let mut depth = 0;
        let mut end = open;
        for (k, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// The paths a `use` tree names: `crate::{a, b::{c, d}}` gives `crate::a`,
/// `crate::b::c`, `crate::b::d`.
fn expand_use(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let prefix = join(prefix, head);
        let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (k, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&prefix, &body[start..k], out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand_use(&prefix, &body[start..], out);
    } else {
        let path = tree.split(" as ").next().unwrap_or("").trim().trim_end_matches("::*");
        if !path.is_empty() {
            out.push(join(prefix, path));
        }
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == "self") {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}::{path}"),
    }
}

/// Every path a file's code names, from `use` items and inline `crate::…`,
/// `super::…` and `self::…` paths.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        if !is_ident(before.as_ref())
            && let Some(end) = after.find(';')
        {
            expand_use("", &after[..end], &mut paths);
        }
        rest = after;
    }
    let chars: Vec<char> = code.chars().collect();
    let text: String = chars.iter().collect();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if is_ident(text[..at].chars().last().as_ref()) && !text[..at].ends_with("$") {
                continue;
            }
            let path: String =
                text[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(path.trim_end_matches(':').to_string());
        }
    }
    paths
}

/// The module a path points into, resolved from `module` (the file's own).
fn target_of(module: &Module, path: &str, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segments = path.split("::").filter(|s| !s.is_empty());
    let mut resolved: Module = match segments.next()? {
        "crate" => Vec::new(),
        "self" => module.clone(),
        "super" => {
            let mut m = module.clone();
            m.pop();
            m
        }
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            resolved.pop();
            continue;
        }
        let mut deeper = resolved.clone();
        deeper.push(segment.to_string());
        if modules.contains(&deeper) {
            resolved = deeper;
        } else {
            break;
        }
    }
    Some(resolved)
}

/// The edge an import makes in the layering graph: between the two children of the
/// modules' nearest common ancestor. None when one module contains the other: a
/// `mod.rs` and its children may use each other (it is their facade).
fn edge(from: &Module, to: &Module) -> Option<(Module, Module)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

fn show(module: &Module) -> String {
    if module.is_empty() { "crate".to_string() } else { module.join("::") }
}

#[test]
fn no_two_modules_import_each_other() {
    let files: Vec<(Module, String)> = source_files()
        .iter()
        .filter_map(|f| module_of(f).map(|m| (m, std::fs::read_to_string(f).expect("read"))))
        .collect();
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    // Edges, with one import that makes each (for the message).
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for (module, text) in &files {
        for path in paths_in(&code_of(text)) {
            let Some(target) = target_of(module, &path, &modules) else { continue };
            if let Some((a, b)) = edge(module, &target) {
                edges
                    .entry(a)
                    .or_default()
                    .entry(b)
                    .or_insert_with(|| format!("{} uses {path}", show(module)));
            }
        }
    }
    // Depth-first search for a cycle; report the first one found, with its imports.
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeMap<Module, String>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if let Some(cycle) = visit(&next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = cycle.windows(2).map(|w| edges[&w[0]][&w[1]].clone()).collect();
            panic!(
                "modules import each other: {}\n  {}",
                cycle.iter().map(show).collect::<Vec<_>>().join(" -> "),
                steps.join("\n  ")
            );
        }
    }
    // The check sees what it must: the config loader does use the components.
    assert!(
        edges.get(&vec!["config".to_string()]).is_some_and(|e| e.contains_key(&vec!["source".to_string()]))
    );
}

#[test]
fn every_file_says_what_lives_there_and_is_on_the_map() {
    let map = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
        .expect("read ARCHITECTURE.md");
    let mut problems = Vec::new();
    for file in source_files() {
        let relative =
            file.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("in the crate").display().to_string();
        let text = std::fs::read_to_string(&file).expect("read");
        if !text.starts_with("//!") {
            problems.push(format!("{relative} does not start with a `//!` line"));
        }
        if !map.contains(&format!("`{relative}`")) {
            problems.push(format!("{relative} is not on ARCHITECTURE.md's map"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_reads_use_trees_and_skips_tests_and_strings() {
    let code = code_of(
        "use crate::{a, b::{c, d as e}};\nlet s = \"crate::x\"; // crate::y\n#[cfg(test)]\nmod tests { use crate::z; }\nfn f() { super::g::h(); let q = '\"'; crate::k::m(); }",
    );
    let paths = paths_in(&code);
    for wanted in ["crate::a", "crate::b::c", "crate::b::d", "super::g::h", "crate::k::m"] {
        assert!(paths.contains(&wanted.to_string()), "{wanted} missing from {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.contains('x') || p.contains('y') || p.contains('z')), "{paths:?}");
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    assert_eq!(edge(&m("sink::webhook"), &m("sink")), None);
    assert_eq!(edge(&m("config"), &m("source::s3")), Some((m("config"), m("source"))));
    assert_eq!(
        edge(&m("sink::airflow::token"), &m("sink::http")),
        Some((m("sink::airflow"), m("sink::http")))
    );
}
