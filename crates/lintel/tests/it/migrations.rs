//! Migrations: every schema change is a versioned file; a fresh data folder with those
//! files reproduces the schema; an edited applied file stops start-up; the CLI applies,
//! reverts and reports them.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestApp, config};

fn specs(list: &Value) -> Vec<Value> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!({"name": c["name"], "kind": c["kind"], "fields": c["fields"], "indexes": c["indexes"], "schema": c["schema"]}))
        .collect()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn migration_files_reproduce_the_schema_in_a_fresh_data_folder() {
    let app = TestApp::spawn().await;
    app.posts().await;
    app.collection(json!({"name": "docs", "kind": "document", "schema": {"type": "object"}}))
        .await;
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/posts",
            Some(json!({"addFields": [{"name": "extra", "type": "text"}], "renameFields": [{"from": "score", "to": "rating"}], "dropFields": ["link"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .admin(Method::DELETE, "/v1/collections/docs", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let before = specs(&app.admin(Method::GET, "/v1/collections", None).await.body);
    let files = app.dir.path().join("migrations");
    assert_eq!(
        std::fs::read_dir(&files).unwrap().count(),
        6,
        "users and five changes"
    );

    let fresh = tempfile::tempdir().unwrap();
    copy_dir(&files, &fresh.path().join("migrations"));
    let cfg = config(fresh.path()).await;
    let app2 = TestApp::start_in(fresh, cfg).await;
    let after = specs(&app2.admin(Method::GET, "/v1/collections", None).await.body);
    assert_eq!(before, after);
    // And the reproduced tables work.
    app2.create("posts", json!({"title": "t", "extra": "e", "rating": 1.5}))
        .await;
    app.shutdown().await;
    app2.shutdown().await;
}

#[tokio::test]
async fn an_edited_applied_migration_stops_start_up() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "notes", "fields": [{"name": "body", "type": "text"}]}))
        .await;
    let dir = app.stop_keep_dir().await;
    let file = std::fs::read_dir(dir.path().join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("notes"))
        .unwrap();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"body\"", "\"text\"");
    std::fs::write(&file, text).unwrap();
    let err = lintel::start(config(dir.path()).await)
        .await
        .err()
        .expect("start-up refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("was changed after it was applied"), "{msg}");
}

fn lintel(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lintel"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("LINTEL_LOG__FORMAT", "pretty")
        // The CLI is exercised on the embedded store in both suites.
        .env_remove("LINTEL_TEST_DATABASE_URL")
        .env_remove("LINTEL_TEST_OIDC_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn cli_reports_applies_and_reverts_migrations() {
    let data = tempfile::tempdir().unwrap();
    let (ok, out) = lintel(data.path(), &["migrate", "new", "add notes"]);
    assert!(ok, "{out}");
    let path = out.trim().trim_start_matches("created ").to_owned();
    assert!(path.ends_with("_add_notes.json"), "{out}");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["up"] = json!([{"op": "createCollection", "collection": {"name": "notes", "fields": [{"name": "body", "type": "text"}]}}]);
    m["down"] = json!([{"op": "dropCollection", "name": "notes"}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let version = m["version"].as_str().unwrap().to_owned();

    let (ok, out) = lintel(data.path(), &["migrate", "status"]);
    assert!(
        ok && out.contains(&version) && out.contains("pending"),
        "{out}"
    );
    let (ok, out) = lintel(data.path(), &["migrate", "up"]);
    assert!(ok && out.contains("applied 1"), "{out}");
    let (ok, out) = lintel(data.path(), &["migrate", "status"]);
    assert!(
        ok && out.contains("applied") && !out.contains("pending"),
        "{out}"
    );
    let (ok, out) = lintel(data.path(), &["migrate", "down"]);
    assert!(ok && out.contains("reverted 1"), "{out}");
    let (ok, out) = lintel(data.path(), &["migrate", "status"]);
    assert!(ok && out.contains("pending"), "{out}");

    // A broken migration is refused and leaves nothing half-applied.
    let bad = data
        .path()
        .join("migrations")
        .join("99999999999999999_bad.json");
    std::fs::write(
        &bad,
        r#"{"version":"99999999999999999","name":"bad","up":[{"op":"createCollection","collection":{"name":"ok_one"}},{"op":"dropCollection","name":"ghost"}]}"#,
    )
    .unwrap();
    let (ok, out) = lintel(data.path(), &["migrate", "up"]);
    assert!(!ok, "{out}");
    assert!(out.contains("ghost"), "{out}");
    // The refused migration stays pending (the line above was repeated here as
    // `contains("applied") || contains("ghost")`, which could not fail).
    let (ok, out) = lintel(data.path(), &["migrate", "status"]);
    let line = out
        .lines()
        .find(|l| l.contains("99999999999999999"))
        .unwrap_or_else(|| panic!("the bad migration is listed: {out}"));
    assert!(ok && line.contains("pending"), "{out}");
    std::fs::remove_file(&bad).unwrap();
    // Had the failed migration left `ok_one` behind, creating it again would fail.
    std::fs::write(
        data.path().join("migrations").join("99999999999999998_ok.json"),
        r#"{"version":"99999999999999998","name":"ok","up":[{"op":"createCollection","collection":{"name":"ok_one"}}]}"#,
    )
    .unwrap();
    let (ok, out) = lintel(data.path(), &["migrate", "up"]);
    assert!(ok && out.contains("applied 1"), "{out}");

    let (ok, out) = lintel(data.path(), &["--version"]);
    assert!(ok && out.contains("lintel"), "{out}");
    let (ok, out) = lintel(data.path(), &["--help"]);
    assert!(
        ok && out.contains("serve") && out.contains("migrate"),
        "{out}"
    );
}
