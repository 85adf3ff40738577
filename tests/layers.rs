//! The house rule, checked on the source: imports only point down the layers, and no import
//! cycle runs across top-level modules (a cycle inside one capability folder is allowed).
//!
//! `cargo test --test layers -- --nocapture` prints every `crate::` edge by layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first. `main.rs` (the roof) is above them all.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "de",
            "invalid",
            "identity",
            "template",
            "testing",
            "errors",
            "header_edit",
            "header_set",
            "metrics",
            "password",
            "share",
            "throttle",
        ],
    ),
    (
        "capabilities",
        &[
            "access_log",
            "aggregate",
            "auth",
            "cache",
            "compression",
            "consumer",
            "edge",
            "grpc",
            "rate_limit",
            "router",
            "script",
            "tls",
            "trace",
            "traffic",
            "transform",
            "upstream",
        ],
    ),
    ("config", &["config"]),
    ("snapshot", &["snapshot"]),
    ("services", &["services"]),
    ("proxy", &["proxy"]),
    ("roof", &["main"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/auth/jwt.rs` → `auth`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level modules a file names through `crate::` (or `apigateway::` in `main.rs`),
/// comments excluded.
fn referenced_modules(text: &str, root: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::X, b}`: every member's first segment.
                let end = group.find('}').unwrap_or(group.len());
                for member in group[..end].split(',') {
                    let name: String = member
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Edges between top-level modules: module → (module it imports → files that do it).
fn edges() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let from = module_of(&src, &file);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let root = if from == "main" {
            "apigateway::"
        } else {
            "crate::"
        };
        for to in referenced_modules(&text, root) {
            if to != from {
                let shown = file.strip_prefix(&src).unwrap().display().to_string();
                out.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(shown);
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    for (from, tos) in edges() {
        assert!(
            layer_of(&from).is_some(),
            "src/{from} has no layer in LAYERS"
        );
        for to in tos.keys() {
            assert!(
                layer_of(to).is_some(),
                "{to} (imported by {from}) has no layer"
            );
        }
    }
}

#[test]
fn imports_only_point_down() {
    let mut upward = Vec::new();
    for (from, tos) in edges() {
        let (Some(lf), true) = (layer_of(&from), true) else {
            continue;
        };
        for (to, files) in tos {
            let Some(lt) = layer_of(&to) else { continue };
            println!(
                "{:<12} {from:<11} -> {:<12} {to:<11} {}",
                LAYERS[lf].0,
                LAYERS[lt].0,
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            if lt > lf {
                upward.push(format!(
                    "{from} ({}) -> {to} ({}) in {files:?}",
                    LAYERS[lf].0, LAYERS[lt].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_cycle_across_top_level_modules() {
    let graph: BTreeMap<String, BTreeSet<String>> = edges()
        .into_iter()
        .map(|(from, tos)| (from, tos.into_keys().collect()))
        .collect();
    // Depth-first search with an explicit path; any back edge is a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle across modules: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let text = "use crate::{de::X, errors};\nlet a = crate::metrics::f(); // crate::proxy\n";
    let found = referenced_modules(text, "crate::");
    let expected: BTreeSet<String> = ["de", "errors", "metrics"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);
}
