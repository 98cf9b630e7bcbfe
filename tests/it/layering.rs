//! No import cycles between modules (ARCHITECTURE.md, "Architecture invariants"): the top-level
//! modules of `src/` form layers, and so do the children of each directory module. Read from the
//! source text itself: every `crate::` path (in `use` lines and inline, groups included) and every
//! `super::` path is resolved to the module it names; test modules (`#[cfg(test)]`) are left out,
//! since they are not part of the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import: the module that has it, the module it names, and where it is (`file:line`).
struct Import {
    from: String,
    to: String,
    at: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/`: `api/mod.rs` is `[api]`, `api/go.rs` is `[api, go]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The text with comments removed and string and character literals emptied (so braces and
/// `crate::` inside them count for nothing); line breaks are kept, so lines still number alike.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r'
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match b.get(j) {
                    None => break,
                    Some(b'"') if (1..=hashes).all(|k| b.get(j + k) == Some(&b'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(b'\n') => out.push('\n'),
                    _ => {}
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            // An escaped character literal ('\n', '\'', '\u{7f}').
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // Not ASCII: copy the whole character.
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

/// The code without items marked `#[cfg(test)]` (a module with its braces, or one item up to
/// its `;`). Line breaks are kept.
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let open = item.find('{');
        let semi = item.find(';');
        let end = match (open, semi) {
            (Some(o), Some(s)) if s < o => s + 1,
            (Some(o), _) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, ch) in item[o..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        out.extend(item[..end].chars().filter(|&ch| ch == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each item of a `{...}` group starting at `s` (after the `{`).
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = Some(0);
    for (k, ch) in s.char_indices() {
        if let Some(start) = item_start {
            let head = s[start..].trim_start();
            if !head.is_empty() {
                heads.push(ident_at(head));
                item_start = None;
            }
        }
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = Some(k + 1),
            _ => {}
        }
    }
    heads.retain(|h| !h.is_empty() && *h != "self");
    heads
}

/// Absolute module paths named from `module` by the code: `crate::a::b`, `super::c`,
/// `super::super::d`, with groups (`crate::{a, b::c}`) expanded; each with its line number.
fn named_paths(module: &[String], code: &str) -> Vec<(Vec<String>, usize)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(['c', 's']) {
            let before = &line[..line.len() - rest.len() + at];
            let here = &rest[at..];
            rest = &rest[at + 1..];
            // Only at the start of a path, not inside `other::crate` or an identifier.
            if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let (mut base, mut tail) = if let Some(t) = here.strip_prefix("crate::") {
                (Vec::new(), t)
            } else if here.starts_with("super::") {
                let mut base = module.to_vec();
                let mut t = here;
                while let Some(after) = t.strip_prefix("super::") {
                    base.pop();
                    t = after;
                }
                (base, t)
            } else {
                continue;
            };
            if let Some(group) = tail.strip_prefix('{') {
                for head in group_heads(group) {
                    let mut p = base.clone();
                    p.push(head.to_owned());
                    found.push((p, n + 1));
                }
                continue;
            }
            // Two segments past the base tell the module and its child.
            for _ in 0..2 {
                let id = ident_at(tail);
                if id.is_empty() {
                    break;
                }
                base.push(id.to_owned());
                match tail[id.len()..].strip_prefix("::") {
                    Some(t) if !t.starts_with('{') => tail = t,
                    _ => break,
                }
            }
            if !base.is_empty() {
                found.push((base, n + 1));
            }
        }
    }
    found
}

/// The modules that are part of a cycle, grouped by cycle (strongly connected components with
/// more than one module).
fn cycles(imports: &[Import]) -> Vec<BTreeSet<String>> {
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        edges.entry(&i.from).or_default().insert(&i.to);
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(m) = todo.pop() {
            for &next in edges.get(m).into_iter().flatten() {
                if seen.insert(next) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> = edges.keys().map(|&m| (m, reach(m))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (&m, r) in &reached {
        if !r.contains(m) {
            continue;
        }
        let scc: BTreeSet<String> = r
            .iter()
            .filter(|&&o| reached.get(o).is_some_and(|ro| ro.contains(m)))
            .map(|&o| o.to_owned())
            .collect();
        if !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

/// Every import between two top-level modules, and between two children of one directory module
/// (keyed by that module, "" for the top level).
fn imports() -> BTreeMap<String, Vec<Import>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut levels: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let module = module_path(rel);
        // The crate roots only declare modules (lib.rs) or use the library from outside (main.rs).
        if module == ["lib"] || module == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let code = without_tests(&code_only(&text));
        for (path, line) in named_paths(&module, &code) {
            let at = format!("src/{}:{line}", rel.display());
            if path[0] != module[0] {
                levels.entry(String::new()).or_default().push(Import {
                    from: module[0].clone(),
                    to: path[0].clone(),
                    at,
                });
            } else if module.len() >= 2 && path.len() >= 2 && path[1] != module[1] {
                levels.entry(module[0].clone()).or_default().push(Import {
                    from: module[1].clone(),
                    to: path[1].clone(),
                    at,
                });
            }
        }
    }
    levels
}

#[test]
fn modules_import_each_other_in_one_direction_only() {
    let levels = imports();
    let top = levels.get("").map_or(0, Vec::len);
    assert!(
        top > 100,
        "only {top} imports between top-level modules found: is the scan reading src/?"
    );
    let mut report = String::new();
    for (parent, imports) in &levels {
        for cycle in cycles(imports) {
            let name = |m: &str| {
                if parent.is_empty() {
                    m.to_owned()
                } else {
                    format!("{parent}::{m}")
                }
            };
            let members: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            report.push_str(&format!("cycle: {}\n", members.join(", ")));
            let mut shown = BTreeSet::new();
            for i in imports {
                if cycle.contains(&i.from)
                    && cycle.contains(&i.to)
                    && shown.insert((&i.from, &i.to))
                {
                    report.push_str(&format!(
                        "  {} -> {} (e.g. {})\n",
                        name(&i.from),
                        name(&i.to),
                        i.at
                    ));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "modules import each other (move what both need into a module below both):\n{report}"
    );
}

#[test]
fn the_scan_reads_paths_groups_and_skips_tests_and_literals() {
    let code = without_tests(&code_only(
        "use crate::a::b;\nuse crate::{c, d::e, f::{g, h}};\nlet s = \"crate::x\"; // crate::y\n\
         let r = r#\"crate::z { \"#;\nfn f() { super::k::m(); other::crate::n(); }\n\
         #[cfg(test)]\nmod tests { use crate::t; fn f() { if x { } } }\nuse crate::after;\n",
    ));
    let module = vec!["top".to_owned(), "child".to_owned()];
    let found: Vec<(Vec<String>, usize)> = named_paths(&module, &code);
    let names: Vec<String> = found.iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(
        names,
        ["a::b", "c", "d", "f", "top::k::m", "after"],
        "from {code:?}"
    );
    assert_eq!(found.last().map(|(_, line)| *line), Some(8));
}
