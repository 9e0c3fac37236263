//! The `lintel superuser create` and `lintel dev-cert` commands, run as the binary a
//! user runs (not through library calls), then checked by their effect.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{TestApp, config};

/// The `lintel` binary with none of the suite's own variables, so only what a test
/// passes reaches it.
fn lintel() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lintel"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LINTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LINTEL_LOG__FORMAT", "pretty");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// The superuser the command creates signs in on a server started on the same data
// folder (and store: on PostgreSQL the command is pointed at the test's database).
#[tokio::test]
async fn superuser_create_makes_an_account_that_signs_in() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(data.path()).await;
    let with_store = |cmd: &mut Command| {
        cmd.arg("--data-dir").arg(data.path());
        if !cfg.database_url.0.is_empty() {
            cmd.env("LINTEL_DATABASE_URL", &cfg.database_url.0);
        }
        // Cheap hashes keep the test fast; the server verifies with the hash's own
        // parameters.
        cmd.env("LINTEL_AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("LINTEL_AUTH__ARGON2_ITERATIONS", "1");
    };
    let password = "a superuser passphrase";

    // A password that breaks the password rules is refused, and nothing is created.
    let mut cmd = lintel();
    with_store(&mut cmd);
    let (ok, out) = run(cmd
        .args(["superuser", "create", "root@example.com"])
        .env("LINTEL_SUPERUSER_PASSWORD", "short"));
    assert!(!ok, "{out}");
    assert!(out.contains("password"), "{out}");
    let mut cmd = lintel();
    with_store(&mut cmd);
    let (ok, out) = run(cmd
        .args(["superuser", "create", "not-an-email"])
        .env("LINTEL_SUPERUSER_PASSWORD", password));
    assert!(!ok && out.contains("not an email address"), "{out}");

    let mut cmd = lintel();
    with_store(&mut cmd);
    let (ok, out) = run(cmd
        .args(["superuser", "create", "Root@Example.com"])
        .env("LINTEL_SUPERUSER_PASSWORD", password));
    assert!(ok, "{out}");
    assert!(out.contains("created superuser root@example.com"), "{out}");

    let app = TestApp::start_in(data, cfg).await;
    let login = |pw: &'static str| {
        app.json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "root@example.com", "password": pw, "collection": "_superusers"}),
        )
    };
    let r = login("short").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = login(password).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = r.body["accessToken"].as_str().unwrap().to_owned();
    // It is a superuser: it manages collections.
    let r = app
        .send(app.req(Method::GET, "/v1/collections").bearer_auth(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // And the failed attempt created nobody.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "not-an-email", "password": password, "collection": "_superusers"}),
        )
        .await;
    assert_ne!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

#[test]
fn dev_cert_writes_a_certificate_and_a_private_key_only_the_owner_reads() {
    use std::os::unix::fs::PermissionsExt;
    let out_dir = tempfile::tempdir().unwrap();
    let target = out_dir.path().join("certs");
    let (ok, out) = run(lintel().arg("dev-cert").arg("--out").arg(&target));
    assert!(ok, "{out}");
    let cert = target.join("cert.pem");
    let key = target.join("key.pem");
    assert!(out.contains(&cert.display().to_string()), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key.pem is private: {mode:o}");

    // Both parse as PEM of the right kind, and the certificate is for local names.
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        cert_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{cert_pem}"
    );
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let parsed = pem.parse_x509().unwrap();
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
    assert!(rcgen::KeyPair::from_pem(&key_pem).is_ok(), "the key parses");
    // And the key is the certificate's.
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        key.public_key_raw(),
        parsed.public_key().subject_public_key.data.as_ref()
    );
}

/// Runs the binary off the test's runtime, so the in-process server keeps serving.
async fn run_async(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

// `lintel import` and `lintel export` are clients of a running server: the import's
// bad rows are reported by line, the export lands in a file (or standard output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_commands_drive_a_running_server() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "items", "fields": [
        {"name": "name", "type": "text", "required": true},
        {"name": "qty", "type": "integer", "min": 0}
    ]}))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("items.csv");
    std::fs::write(&csv, "name,qty\nbolt,3\nnut,-1\nscrew,7\n").unwrap();
    let base = app.url("");
    let mut cmd = lintel();
    cmd.args(["import", "items"])
        .arg(&csv)
        .args(["--mode", "partial", "--url", &base])
        .env("LINTEL_TOKEN", crate::common::ADMIN_TOKEN);
    let (ok, out) = run_async(cmd).await;
    assert!(ok, "{out}");
    assert!(out.contains("2 imported, 1 failed"), "{out}");
    assert!(out.contains("line 3"), "{out}");
    // Atomic with a bad row: nothing kept, and the command fails.
    let mut cmd = lintel();
    cmd.args(["import", "items"])
        .arg(&csv)
        .args(["--url", &base])
        .env("LINTEL_TOKEN", crate::common::ADMIN_TOKEN);
    let (ok, out) = run_async(cmd).await;
    assert!(!ok, "{out}");
    let out_file = dir.path().join("out.csv");
    let mut cmd = lintel();
    cmd.args([
        "export", "items", "--format", "csv", "--filter", "qty > 5", "--fields", "name,qty",
        "--url", &base, "--out",
    ])
    .arg(&out_file)
    .env("LINTEL_TOKEN", crate::common::ADMIN_TOKEN);
    let (ok, out) = run_async(cmd).await;
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "name,qty\r\nscrew,7\r\n"
    );
    // Standard output by default; no token, no request.
    let mut cmd = lintel();
    cmd.args(["export", "items", "--url", &base])
        .env("LINTEL_TOKEN", crate::common::ADMIN_TOKEN);
    let (ok, out) = run_async(cmd).await;
    assert!(
        ok && out.lines().filter(|l| l.starts_with('{')).count() == 2,
        "{out}"
    );
    let mut cmd = lintel();
    cmd.args(["export", "items", "--url", &base]);
    let (ok, out) = run_async(cmd).await;
    assert!(!ok && out.contains("LINTEL_TOKEN"), "{out}");
    app.shutdown().await;
}
