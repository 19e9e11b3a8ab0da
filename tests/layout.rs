//! The crate's layout holds: every module's dependencies on other modules of the crate
//! (each `crate::` and `super::` path in its code, `use` lines and inline paths alike,
//! test modules left out) form no circle, and none runs from a lower layer to a higher
//! one. The layers are those of `src/lib.rs`'s "Layout" section, from the ground up.
//!
//! `cargo test --test layout -- --nocapture` prints every edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each layer's modules (a module and everything below it), ground first. A module may
/// depend on its own layer and the ones below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground",
        &["message", "config", "component", "shutdown", "telemetry"],
    ),
    (
        "plugins",
        &[
            "producer",
            "targets",
            "status",
            "kafka",
            "probe",
            "alerts",
            "processing",
        ],
    ),
    (
        "runtime",
        &["runtime", "source", "consumer", "pipeline", "service"],
    ),
    ("http", &["http"]),
    ("cli", &["cli"]),
];

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The module of each source file, as `a::b` (the crate root is empty).
fn modules(src: &Path) -> Result<BTreeMap<String, std::path::PathBuf>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src)?.with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            // The binary is its own crate.
            if parts == ["main"] {
                continue;
            }
            found.insert(parts.join("::"), path);
        }
    }
    Ok(found)
}

/// `text` without comments, string and char literals, and `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            'r' if (next == Some('#') || next == Some('"'))
                && !chars
                    .get(i.wrapping_sub(1))
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
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
                    if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' if next == Some('\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Test modules: from `#[cfg(test)]` before a `mod` to its closing brace.
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let Some(open) = rest.find('{') else { break };
        let is_mod = rest[..open].contains("mod ");
        if !is_mod {
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let mut depth = 0;
        let mut end = rest.len();
        for (k, ch) in rest[open..].char_indices() {
            match ch {
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
        out.replace_range(at..at + end, "");
    }
    out
}

/// Every path a `use` tree names, in full: `a::{b, c::{d, self}}` gives `a::b`,
/// `a::c::d` and `a::c`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or("");
        return vec![leaf.chars().filter(|c| !c.is_whitespace()).collect()];
    };
    let prefix: String = tree[..open]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let prefix = prefix.as_str();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |rest| {
                if rest == "self" {
                    prefix.trim_end_matches("::").to_string()
                } else {
                    format!("{prefix}{rest}")
                }
            })
        })
        .collect()
}

/// The paths of the crate that `code` (of module `module`) names, as `a::b::c`: paths
/// from `crate::`, `super::` or `self::`, and paths from one of the module's own child
/// modules (`log::Log` in `embedded/mod.rs`).
fn paths_named(
    code: &str,
    module: &str,
    modules: &BTreeMap<String, std::path::PathBuf>,
) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` trees, whole.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after_word = before.is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if after_word {
            paths.extend(expand(&tail[..end]));
        }
        rest = &tail[end.min(tail.len())..];
    }
    // Every other path: a word followed by `::`, not itself after `::`.
    let bytes = code.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !(word(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let path: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            i += path.len().max(1);
            // `super::{...}` is a use tree, read whole above.
            if path.contains("::") && !path.ends_with("::") {
                paths.push(path);
            }
        } else {
            i += 1;
        }
    }
    let mut paths: Vec<String> = paths
        .into_iter()
        .filter_map(|p| absolute(&p, module, modules))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// `path` as seen from `module`, from the crate root; none if it is not the crate's.
fn absolute(
    path: &str,
    module: &str,
    modules: &BTreeMap<String, std::path::PathBuf>,
) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    match segments.first().copied() {
        Some("crate") => {
            segments.remove(0);
            base.clear();
        }
        Some("super") => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
        }
        Some("self") => {
            segments.remove(0);
        }
        Some(first) => {
            let child = if module.is_empty() {
                first.to_string()
            } else {
                format!("{module}::{first}")
            };
            if !modules.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    base.extend(segments);
    Some(base.join("::"))
}

/// The deepest module `path` lies in.
fn module_of(path: &str, modules: &BTreeMap<String, std::path::PathBuf>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (0..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let top = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, tops))| tops.contains(&top))
        .map(|(i, (name, _))| (i, *name))
}

#[test]
fn modules_form_layers_without_circles() -> Result {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src)?;
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file)?);
        for path in paths_named(&code, module, &modules) {
            if let Some(target) = module_of(&path, &modules)
                && &target != module
                && !target.is_empty()
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let mut problems = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            println!("{from} -> {to}");
            match (layer_of(from), layer_of(to)) {
                (Some((a, la)), Some((b, lb))) if b > a => {
                    problems.push(format!("upward: {from} ({la}) -> {to} ({lb})"))
                }
                (None, _) => problems.push(format!("{from} is in no layer of LAYERS")),
                (_, None) => problems.push(format!("{to} is in no layer of LAYERS")),
                _ => {}
            }
        }
    }
    problems.extend(circles(&edges));
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    Ok(())
}

/// Each circle of `edges`, once, as `a -> b -> a`.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Tarjan's strongly connected components: each of more than one module is a circle.
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.edges.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state
        .found
        .iter()
        .map(|component| {
            let inside: BTreeSet<&str> = component.iter().copied().collect();
            let ties: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    edges[*from]
                        .iter()
                        .filter(|to| inside.contains(to.as_str()))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            format!("circle of {}: {}", component.len(), ties.join(", "))
        })
        .collect()
}

#[test]
fn use_trees_and_paths_are_read_in_full() {
    let mut paths = expand("crate::a::{b, c::{d, self}, e as f}");
    paths.sort();
    assert_eq!(
        paths,
        [
            "crate::a::b",
            "crate::a::c",
            "crate::a::c::d",
            "crate::a::e"
        ]
    );
    let code = code_of(
        "use super::x; // crate::nope\nlet s = \"crate::no\"; crate::y::z(); c::f(); std::mem::take(); a::c::no();\n#[cfg(test)]\nmod tests { use crate::t; }",
    );
    let modules: BTreeMap<String, std::path::PathBuf> = ["m", "m::n", "m::n::c", "y"]
        .iter()
        .map(|m| (m.to_string(), std::path::PathBuf::new()))
        .collect();
    let named = paths_named(&code, "m::n", &modules);
    assert_eq!(named, ["m::n::c::f", "m::x", "y::z"]);
}
