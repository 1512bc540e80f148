//! Each module imports only from the layers below its own, as `src/lib.rs`
//! lists them: a `crate::` path naming a module of the same or a higher
//! layer is an upward import (and the start of an import circle).

use std::path::Path;

/// Layers, lowest first, as in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["keys", "routing", "message", "latency", "embedded", "exit"],
    &["generator", "channel"],
    &["store"],
    &["settings"],
    &["stats"],
    &[
        "produce", "send", "monitor", "metrics", "audit", "senders", "dead", "repair", "acl",
    ],
    &["demo", "bench", "serve"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file under `src/` belongs to.
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules named right after a `crate::`: one, or several in
/// a `crate::{a, b::c}` group.
fn named_modules(after: &str) -> Vec<String> {
    let word = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    match after.strip_prefix('{') {
        Some(group) => group
            .split('}')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(word)
            .filter(|w| !w.is_empty())
            .collect(),
        None => vec![word(after)]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect(),
    }
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    files(&src, &mut found);
    let mut upward = Vec::new();
    let mut checked = 0;
    for path in &found {
        let relative = path.strip_prefix(&src).expect("under src/");
        let module = module_of(relative);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer(&module).unwrap_or_else(|| panic!("{module} is in no layer"));
        let text = std::fs::read_to_string(path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                for named in named_modules(&code[at + 7..]) {
                    if named == module {
                        continue;
                    }
                    checked += 1;
                    match layer(&named) {
                        Some(theirs) if theirs < own => {}
                        _ => upward.push(format!(
                            "{}:{}: {module} -> {named}",
                            relative.display(),
                            n + 1
                        )),
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} crate:: paths found");
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}
