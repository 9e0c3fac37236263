//! The layers point one way (docs/ARCHITECTURE.md): types and configuration, then the
//! schema, then the store, then access (callers, rules, permits), then capabilities,
//! then the HTTP edge and the application state, then start-up and the command line. This test reads every `crate::` path in the library's
//! sources and fails when a file reaches a higher layer than its own, unless that
//! import is in `layers.allow`: the imports that existed when the check was added
//! (issue 10 removes them). An allowed import that disappears must leave the list too,
//! so the list only ever shrinks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layer of a source file (path under `src/`) or of a module path under `crate::`.
fn layer(path: &str) -> Option<u8> {
    const LAYERS: [(&str, u8); 44] = [
        ("clock", 0),
        ("ids", 0),
        ("config", 0),
        ("telemetry", 0),
        ("validation", 0),
        ("schema", 1),
        ("store", 2),
        ("migrations", 2),
        ("access", 3),
        // A capability's HTTP routes are the edge's part of it.
        ("records/routes", 5),
        ("batch/routes", 5),
        ("collections/routes", 5),
        ("auth/routes", 5),
        ("events/routes", 5),
        ("jobs/routes", 5),
        ("webhooks/routes", 5),
        ("files/routes", 5),
        ("realtime/routes", 5),
        ("yjs/routes", 5),
        ("search/routes", 5),
        // Resolving the caller from a request (the extractor, the session-cookie
        // middleware) is the edge's work.
        ("auth/caller", 5),
        ("records", 4),
        ("auth", 4),
        ("batch", 4),
        ("events", 4),
        ("jobs", 4),
        ("outbound", 4),
        ("webhooks", 4),
        ("files", 4),
        ("realtime", 4),
        ("yjs", 4),
        ("search", 4),
        ("ratelimit", 4),
        ("cache", 4),
        ("tasks", 4),
        ("collections", 4),
        ("http", 5),
        ("error", 5),
        ("app", 6),
        ("state", 5),
        ("runtime", 4),
        ("cli", 6),
        ("lib", 6),
        ("main", 6),
    ];
    LAYERS
        .iter()
        .find(|(prefix, _)| {
            path == *prefix
                || path.starts_with(&format!("{prefix}/"))
                || path.starts_with(&format!("{prefix}.rs"))
        })
        .map(|(_, l)| *l)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The upward imports of one file (`rel`, its path under `src/`) given its text.
fn violations_in(rel: &str, text: &str) -> Vec<String> {
    let own = rel.trim_end_matches(".rs").trim_end_matches("/mod");
    let Some(own_layer) = layer(own) else {
        panic!("{rel} has no layer: add it to layers.rs and docs/ARCHITECTURE.md")
    };
    let text = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    // A module named by two segments when they make a layer of their own
    // (`records/routes`), else by its first.
    let target_of = |first: &str, second: Option<&str>| match second {
        Some(second) if layer(&format!("{first}/{second}")) != layer(first) => {
            format!("{first}/{second}")
        }
        _ => first.to_owned(),
    };
    let mut paths: Vec<String> = Vec::new();
    let path_re = regex::Regex::new(r"crate::([a-z_]+)(?:::([a-z_]+))?").unwrap();
    for cap in path_re.captures_iter(&text) {
        paths.push(target_of(&cap[1], cap.get(2).map(|m| m.as_str())));
    }
    // `use crate::{a, b::c}` names its modules one by one.
    let group_re = regex::Regex::new(r"use crate::\{([^}]*)\}").unwrap();
    for cap in group_re.captures_iter(&text) {
        for item in cap[1].split(',') {
            let mut parts = item.trim().split("::");
            let first = parts.next().unwrap_or("").trim();
            if !first.is_empty() {
                paths.push(target_of(first, parts.next().map(str::trim)));
            }
        }
    }
    let mut out: Vec<String> = paths
        .into_iter()
        .filter(|t| layer(t).is_some_and(|l| l > own_layer))
        .map(|t| format!("{rel} -> {t}"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every `file -> module` import that goes up a layer.
fn upward_imports() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 40, "the sources were found");
    let mut out = BTreeSet::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        out.extend(violations_in(&rel, &text));
    }
    out
}

#[test]
fn no_new_import_points_up_a_layer() {
    let allow_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/layers.allow");
    let allowed: BTreeSet<String> = std::fs::read_to_string(&allow_path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let found = upward_imports();
    let new: Vec<&String> = found.difference(&allowed).collect();
    let gone: Vec<&String> = allowed.difference(&found).collect();
    assert!(
        new.is_empty(),
        "imports that point up a layer (see docs/ARCHITECTURE.md); move the shared code down instead:\n{}",
        new.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        gone.is_empty(),
        "these allowed upward imports are gone: remove them from tests/it/layers.allow:\n{}",
        gone.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    assert_eq!(
        violations_in(
            "store/x.rs",
            "use crate::http::edge::RequestId;\nlet e = crate::error::ApiError::internal(x);"
        ),
        vec!["store/x.rs -> error", "store/x.rs -> http"]
    );
    assert_eq!(
        violations_in("schema/kinds.rs", "use crate::{auth::rules, clock::now};"),
        vec!["schema/kinds.rs -> auth"]
    );
    assert!(violations_in("records/service.rs", "use crate::schema::Collection;").is_empty());
    assert!(violations_in("http/edge.rs", "use crate::store::Store;").is_empty());
    // Routes sit with the edge; the service below them may not reach them.
    assert!(violations_in("records/routes.rs", "use crate::state::AppState;").is_empty());
    assert_eq!(
        violations_in(
            "records/service/read.rs",
            "use crate::records::routes::router;"
        ),
        vec!["records/service/read.rs -> records/routes"]
    );
    // A comment is no import.
    assert!(violations_in("store/x.rs", "// see crate::http::edge").is_empty());
}
