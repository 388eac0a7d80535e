//! The balancer's modules depend on each other without cycles (one concept
//! per module; ARCHITECTURE.md draws the picture). A module's dependencies
//! are the `crate::<module>` paths in its code, doc comments aside.

use std::collections::{BTreeMap, BTreeSet};

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    let names: Vec<String> = std::fs::read_dir(&src)
        .expect("src")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_owned))
        .filter(|m| m != "lib")
        .collect();
    for module in &names {
        let text = std::fs::read_to_string(src.join(format!("{module}.rs"))).expect("source");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut deps = BTreeSet::new();
        // `crate::name::…` and `use crate::{name::…, name, …}`.
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let group = if let Some(inner) = rest.strip_prefix('{') {
                &inner[..inner.find("};").unwrap_or(inner.len())]
            } else {
                &rest[..rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len())]
            };
            for part in group.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if names.iter().any(|n| n == part) && part != module {
                    deps.insert(part.to_owned());
                }
            }
        }
        modules.insert(module.clone(), deps);
    }
    modules
}

#[test]
fn the_balancers_modules_form_no_cycle() {
    let graph = dependencies();
    assert!(graph.len() > 10, "modules found: {graph:?}");
    // Depth-first search for a path back to where it started.
    fn back_to(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
    ) -> bool {
        for next in &graph[at] {
            if next == start {
                return true;
            }
            if !path.contains(next) {
                path.push(next.clone());
                if back_to(graph, start, next, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        assert!(
            !back_to(&graph, module, module, &mut path),
            "a dependency cycle: {} -> {module}",
            path.join(" -> ")
        );
    }
}
