//! The architecture as docs/ARCHITECTURE.md draws it is the architecture of `src/`: this reads the code's
//! `crate::` paths into a graph of top-level modules and fails on a module cycle, on a dependency that points up
//! the documented layers, on a module no layer names, and on an arrow in the picture that the code does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the modules (and `transports`, the other crate) its code names.
type Graph = BTreeMap<String, BTreeSet<String>>;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names after `crate::` (`crate::store::X`, `crate::{model, protocol::Y}`) in code, comments excluded.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(inner.split(',').filter_map(|n| n.trim().split("::").next()).map(str::to_owned));
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn graph() -> Graph {
    let src = Path::new(REPO).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue; // the crate root declares the modules and re-exports; it is not one of them
        }
        let code = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(crate_paths(&code).into_iter().filter(|n| *n != top));
        if code.contains("stickless_transports") {
            deps.insert("transports".into());
        }
    }
    graph
}

fn architecture_doc() -> String {
    std::fs::read_to_string(Path::new(REPO).join("docs/ARCHITECTURE.md")).unwrap()
}

/// The `layers:` line of the doc, lowest first: `model | protocol recovery | ...`.
fn layers(doc: &str) -> BTreeMap<String, usize> {
    let line =
        doc.lines().find_map(|l| l.trim().strip_prefix("layers:")).expect("ARCHITECTURE.md has a `layers:` line");
    let mut layer_of = BTreeMap::new();
    for (i, layer) in line.split('|').enumerate() {
        for module in layer.split_whitespace() {
            assert!(layer_of.insert(module.to_owned(), i).is_none(), "{module} is in two layers");
        }
    }
    layer_of
}

/// The arrows of the doc's mermaid picture: `a --> b`, "a uses b".
fn arrows(doc: &str) -> Vec<(String, String)> {
    let picture = doc.split("```mermaid").nth(1).expect("ARCHITECTURE.md has a mermaid picture");
    let picture = &picture[..picture.find("```").unwrap()];
    picture
        .lines()
        .filter_map(|l| l.split_once("-->"))
        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
        .collect()
}

fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn src_has_no_module_cycle() {
    let graph = graph();
    assert!(graph.len() > 5, "found the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle in src/: {}", cycle.join(" -> "));
    }
}

#[test]
fn every_dependency_points_down_the_documented_layers() {
    let graph = graph();
    let layer_of = layers(&architecture_doc());
    for module in graph.keys() {
        assert!(layer_of.contains_key(module), "src/{module} is in no layer of ARCHITECTURE.md's `layers:` line");
    }
    for module in layer_of.keys() {
        assert!(graph.contains_key(module), "ARCHITECTURE.md names `{module}`, which is not a module of src/");
    }
    for (module, deps) in &graph {
        for dep in deps.iter().filter(|d| *d != "transports") {
            assert!(layer_of[module] > layer_of[dep], "{module} uses {dep}, which is not in a lower layer");
        }
    }
}

#[test]
fn the_picture_draws_only_real_dependencies() {
    let graph = graph();
    let arrows = arrows(&architecture_doc());
    assert!(arrows.len() > 10, "the picture has its arrows: {arrows:?}");
    for (from, to) in arrows {
        assert!(graph.contains_key(&from), "the picture names `{from}`, which is not a module of src/");
        let deps = &graph[&from];
        assert!(deps.contains(&to), "the picture draws {from} --> {to}, but {from} does not use {to}");
    }
}

#[test]
fn the_scanner_reads_paths_and_groups() {
    let code =
        "use crate::model::{A, B};\nuse crate::{protocol, store::X};\n// crate::ignored\nlet x = crate::hub::f();";
    let names: Vec<_> = crate_paths(code).into_iter().collect();
    assert_eq!(names, ["hub", "model", "protocol", "store"]);
    let mut cyclic = Graph::new();
    cyclic.entry("a".into()).or_default().insert("b".into());
    cyclic.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&cyclic), Some(vec!["a".into(), "b".into(), "a".into()]));
}
