//! HTTPS with certificates generated here: HTTP/2 by ALPN (and HTTP/1.1), HSTS, the
//! plain-HTTP redirect, certificate reload without restart, and mutual TLS accepted
//! and refused.

use std::path::Path;
use std::time::Duration;

use reqwest::{StatusCode, Version};

use crate::common::{TestApp, config};

fn client(trust: &Path) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(trust).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
}

async fn https_app(dir: &Path, f: impl FnOnce(&mut lintel::Config)) -> (TestApp, u16) {
    let certs = dir.join("certs");
    lintel::http::serve::write_dev_cert(&certs).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path()).await;
    cfg.tls.cert_file = certs.join("cert.pem");
    cfg.tls.key_file = certs.join("key.pem");
    f(&mut cfg);
    let app = TestApp::start_in(data, cfg).await;
    let port = app.addr.port();
    (app, port)
}

#[tokio::test]
async fn https_negotiates_http2_sends_hsts_and_plain_http_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let (app, port) = https_app(dir.path(), |c| {
        c.tls.redirect_listen = "127.0.0.1:0".into();
    })
    .await;
    let redirect_port = app
        .running()
        .redirect_addr
        .expect("a redirect listener")
        .port();
    let cert = dir.path().join("certs/cert.pem");
    let url = format!("https://localhost:{port}/v1/health");

    let h2 = client(&cert).build().unwrap();
    let res = h2.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2, "ALPN picks HTTP/2");
    let hsts = res.headers()["strict-transport-security"].to_str().unwrap();
    assert!(hsts.starts_with("max-age=31536000"), "{hsts}");

    let h1 = client(&cert).http1_only().build().unwrap();
    let res = h1.get(&url).send().await.unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(res.status(), StatusCode::OK);

    // Plain HTTP on the HTTPS port is not served.
    let plain = reqwest::Client::new();
    assert!(
        plain
            .get(format!("http://127.0.0.1:{port}/v1/health"))
            .send()
            .await
            .is_err()
    );
    // The redirect listener sends everything to HTTPS, path and query kept.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "http://localhost:{redirect_port}/v1/collections?x=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        res.headers()["location"],
        format!("https://localhost:{port}/v1/collections?x=1").as_str()
    );
    // A client that does not trust the certificate cannot connect.
    let other = tempfile::tempdir().unwrap();
    lintel::http::serve::write_dev_cert(other.path()).unwrap();
    let stranger = client(&other.path().join("cert.pem")).build().unwrap();
    assert!(stranger.get(&url).send().await.is_err());
    app.shutdown().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (app, port) = https_app(dir.path(), |_| {}).await;
    let url = format!("https://localhost:{port}/v1/health");
    let old = dir.path().join("old-cert.pem");
    std::fs::copy(dir.path().join("certs/cert.pem"), &old).unwrap();
    assert!(client(&old).build().unwrap().get(&url).send().await.is_ok());

    // A new key and certificate land in place (as a renewal would write them).
    let fresh = tempfile::tempdir().unwrap();
    lintel::http::serve::write_dev_cert(fresh.path()).unwrap();
    std::fs::copy(
        fresh.path().join("key.pem"),
        dir.path().join("certs/key.pem"),
    )
    .unwrap();
    std::fs::copy(
        fresh.path().join("cert.pem"),
        dir.path().join("certs/cert.pem"),
    )
    .unwrap();
    let new = fresh.path().join("cert.pem");
    let mut served = false;
    for _ in 0..60 {
        // A new client each time: a new connection, a new handshake.
        if client(&new).build().unwrap().get(&url).send().await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "the new certificate is served");
    assert!(
        client(&old)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .is_err(),
        "the old one is gone"
    );
    app.shutdown().await;
}

fn issue_client_cert(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str) -> String {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

#[tokio::test]
async fn mutual_tls_names_the_calling_service_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = new_ca("Lintel test services CA");
    std::fs::write(dir.path().join("clients-ca.pem"), &ca_pem).unwrap();
    let ca_file = dir.path().join("clients-ca.pem");
    let (app, port) = https_app(dir.path(), |c| {
        c.tls.client_ca_file = ca_file.clone();
    })
    .await;
    let cert = dir.path().join("certs/cert.pem");
    let url = format!("https://localhost:{port}/v1/auth/me");

    let identity =
        reqwest::Identity::from_pem(issue_client_cert(&ca, "billing.internal").as_bytes()).unwrap();
    let res = client(&cert)
        .identity(identity)
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["via"], "client_certificate");
    assert_eq!(body["user"]["id"], "billing.internal");
    assert_eq!(body["user"]["collection"], "_services");

    // No certificate, or one from another CA: no connection.
    assert!(
        client(&cert)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .is_err()
    );
    let (_, rogue) = new_ca("Rogue CA");
    let stranger =
        reqwest::Identity::from_pem(issue_client_cert(&rogue, "billing.internal").as_bytes())
            .unwrap();
    assert!(
        client(&cert)
            .identity(stranger)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .is_err()
    );
    app.shutdown().await;
}
