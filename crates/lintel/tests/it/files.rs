//! Files: multipart uploads checked while streaming (size, type by content,
//! polyglots), names cleaned, downloads with validators and ranges, private files and
//! file tokens, the view rule, modifiers, concurrent appends, and blobs removed after
//! the writes that drop them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Reply, TestApp, access, bearer, login, signup};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\x0f\0\0\x01\x01\0\x05\x18\xd8N\0\0\0\0IEND\xaeB`\x82";
const GIF: &[u8] = b"GIF89a\x01\0\x01\0\x80\0\0\0\0\0\xff\xff\xff!\xf9\x04\x01\0\0\0\0,\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0;";
const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0";

/// One part of a multipart body: a file when `file` names it.
struct Part<'a> {
    name: &'a str,
    file: Option<&'a str>,
    data: Vec<u8>,
}

fn text<'a>(name: &'a str, v: &str) -> Part<'a> {
    Part {
        name,
        file: None,
        data: v.as_bytes().to_vec(),
    }
}

fn file<'a>(name: &'a str, file_name: &'a str, data: &[u8]) -> Part<'a> {
    Part {
        name,
        file: Some(file_name),
        data: data.to_vec(),
    }
}

/// A `multipart/form-data` body and its content type. The client's part type is
/// always a lie here (`image/png`): the server reads the bytes.
fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "lintel-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: image/png\r\n\r\n",
                    p.name, f
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{}\"\r\n\r\n", p.name).as_bytes(),
            ),
        }
        body.extend_from_slice(&p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn send_parts(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    parts: &[Part<'_>],
) -> Reply {
    let (ct, body) = multipart(parts);
    let mut r = app.req(method, path).header("content-type", ct).body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    app.send(r).await
}

async fn docs(app: &TestApp, view: &str, private: bool) {
    app.collection(json!({
        "name": "docs",
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "owner", "type": "text"},
            {"name": "avatar", "type": "file", "maxSize": 1000, "mimeTypes": ["image/png"], "private": private},
            {"name": "attachments", "type": "file", "maxCount": 20},
        ],
        "rules": {"list": view, "view": view, "create": "", "update": "", "delete": ""},
    }))
    .await;
}

/// Files of the blob store and of the staging folder.
fn stored(app: &TestApp) -> (usize, usize) {
    fn count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    let root = app.dir.path().join("files");
    (count(&root.join("blobs")), count(&root.join("tmp")))
}

async fn fetch(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = app.req(Method::GET, path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let res = r.send().await.unwrap();
    let status = res.status();
    let h = res.headers().clone();
    (status, h, res.bytes().await.unwrap().to_vec())
}

fn h<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn uploads_are_kept_and_served_with_validators_and_ranges() {
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[text("title", "hello"), file("avatar", "My Photo.png", PNG)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["title"], "hello");
    let name = r.body["avatar"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("My_Photo_") && name.ends_with(".png"),
        "{name}"
    );
    assert_eq!(r.body["attachments"], json!([]));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/files/docs/{id}/{name}");
    let (status, headers, body) = fetch(&app, &path, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PNG);
    assert_eq!(h(&headers, "content-type"), "image/png");
    assert_eq!(h(&headers, "x-content-type-options"), "nosniff");
    assert!(h(&headers, "content-disposition").starts_with("inline; filename=\"My Photo.png\""));
    assert!(h(&headers, "content-disposition").contains("filename*=UTF-8''My%20Photo.png"));
    assert_eq!(h(&headers, "accept-ranges"), "bytes");
    let etag = h(&headers, "etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    assert!(!h(&headers, "last-modified").is_empty());
    assert!(h(&headers, "cache-control").contains("max-age"));
    // Validators.
    let (status, _, body) = fetch(&app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    // One range, a suffix, and one past the end.
    let (status, headers, body) = fetch(&app, &path, &[("range", "bytes=0-3")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &PNG[..4]);
    assert_eq!(
        h(&headers, "content-range"),
        format!("bytes 0-3/{}", PNG.len())
    );
    let (status, _, body) = fetch(&app, &path, &[("range", "bytes=-8")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &PNG[PNG.len() - 8..]);
    let past = format!("bytes={}-", PNG.len());
    let (status, headers, _) = fetch(&app, &path, &[("range", &past)]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        h(&headers, "content-range"),
        format!("bytes */{}", PNG.len())
    );
    // If-Range with another version's tag: the whole file.
    let (status, _, body) = fetch(
        &app,
        &path,
        &[("range", "bytes=0-3"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PNG);
    let (status, _, body) =
        fetch(&app, &path, &[("range", "bytes=0-3"), ("if-range", &etag)]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body.len(), 4);
    let (_, headers, _) = fetch(&app, &format!("{path}?download=1"), &[]).await;
    assert!(h(&headers, "content-disposition").starts_with("attachment;"));
    // A name the record does not hold, or another record's path: 404.
    let (status, _, _) = fetch(&app, &format!("/v1/files/docs/{id}/other_abc.png"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch(&app, &format!("/v1/files/docs/{id}/..%2F..%2Fdata.db"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(stored(&app), (1, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn refused_uploads_leave_nothing_behind() {
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    let create = |parts: Vec<Part<'static>>| {
        let app = &app;
        async move {
            send_parts(
                app,
                Method::POST,
                "/v1/collections/docs/records",
                None,
                &parts,
            )
            .await
        }
    };
    // Too big while streaming (maxSize 1000).
    let big = [PNG, &vec![0u8; 5000]].concat();
    let r = create(vec![file("avatar", "big.png", &big)]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.problem_code(), "file_too_large");
    assert_eq!(r.body["errors"]["avatar"]["code"], "too_large");
    // The type comes from the bytes, not the name or the part's Content-Type.
    let r = create(vec![file("avatar", "cat.png", GIF)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["errors"]["avatar"]["code"], "invalid_type");
    assert!(r.text.contains("image/gif"), "{}", r.text);
    // A renamed executable.
    let r = create(vec![file("avatar", "photo.png", ELF)]).await;
    assert_eq!(
        r.body["errors"]["avatar"]["code"], "invalid_type",
        "{}",
        r.text
    );
    // A polyglot: PNG bytes that also carry a script.
    let poly = [
        PNG,
        b"<html><script>alert(document.cookie)</script>".as_slice(),
    ]
    .concat();
    let r = create(vec![file("avatar", "poly.png", &poly)]).await;
    assert_eq!(r.body["errors"]["avatar"]["code"], "polyglot", "{}", r.text);
    // Past maxCount.
    let r = create(vec![
        file("avatar", "a.png", PNG),
        file("avatar", "b.png", PNG),
    ])
    .await;
    assert_eq!(r.body["errors"]["avatar"]["code"], "too_many", "{}", r.text);
    // A file in a field that holds none.
    let r = create(vec![file("title", "a.png", PNG)]).await;
    assert_eq!(
        r.body["errors"]["title"]["code"], "not_a_file_field",
        "{}",
        r.text
    );
    // A valid file with an invalid field: the record and its file are both refused.
    let r = create(vec![text("nope", "x"), file("avatar", "a.png", PNG)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // A JSON write cannot name files it did not upload.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/docs/records",
            json!({"avatar": "stolen_abc.png"}),
        )
        .await;
    assert_eq!(
        r.body["errors"]["avatar"]["code"], "unknown_file",
        "{}",
        r.text
    );
    let list = app
        .json(Method::GET, "/v1/collections/docs/records", json!(null))
        .await;
    assert_eq!(list.body["totalItems"], 0, "{}", list.text);
    assert_eq!(stored(&app), (0, 0), "no blob and no staged upload is left");
    app.shutdown().await;
}

#[tokio::test]
async fn names_are_cleaned_and_active_content_is_an_attachment() {
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[
            file(
                "attachments",
                "../../../etc/ca\u{202e}fe\u{301}.html",
                b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            ),
            file(
                "attachments",
                "..\\..\\.hidden.svg",
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    let names: Vec<String> = r.body["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2);
    for n in &names {
        assert!(
            !n.contains('/') && !n.contains('\\') && !n.starts_with('.'),
            "{n}"
        );
        assert!(n.is_ascii(), "{n}");
    }
    assert!(
        names[0].ends_with(".html") && names[1].ends_with(".svg"),
        "{names:?}"
    );
    let (status, headers, _) = fetch(&app, &format!("/v1/files/docs/{id}/{}", names[0]), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let cd = h(&headers, "content-disposition");
    assert!(cd.starts_with("attachment;"), "HTML is never inline: {cd}");
    // The original, cleaned: last segment, no control or bidi characters, NFC.
    assert!(cd.contains("filename*=UTF-8''caf%C3%A9.html"), "{cd}");
    assert!(h(&headers, "content-security-policy").contains("sandbox"));
    let (_, headers, _) = fetch(&app, &format!("/v1/files/docs/{id}/{}", names[1]), &[]).await;
    let cd = h(&headers, "content-disposition");
    assert!(
        cd.starts_with("attachment;") && cd.contains("hidden.svg"),
        "{cd}"
    );
    app.shutdown().await;
}

async fn eventually_stored(app: &TestApp, want: (usize, usize)) -> (usize, usize) {
    for _ in 0..200 {
        if stored(app) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stored(app)
}

#[tokio::test]
async fn modifiers_add_remove_and_replace_and_dropped_blobs_go() {
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[text("title", "t")],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let rec = format!("/v1/collections/docs/records/{id}");
    let r = send_parts(
        &app,
        Method::PATCH,
        &rec,
        None,
        &[
            file("attachments+", "a.txt", b"first"),
            file("attachments+", "b.txt", b"second"),
            file("avatar", "x.png", PNG),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<String> = serde_json::from_value(r.body["attachments"].clone()).unwrap();
    assert_eq!(names.len(), 2);
    let avatar = r.body["avatar"].as_str().unwrap().to_owned();
    let r = send_parts(
        &app,
        Method::PATCH,
        &rec,
        None,
        &[file("attachments+", "c.txt", b"third")],
    )
    .await;
    assert_eq!(
        r.body["attachments"].as_array().unwrap().len(),
        3,
        "{}",
        r.text
    );
    assert_eq!(stored(&app), (4, 0));
    // JSON: remove one by name, and the avatar.
    let r = app
        .json(
            Method::PATCH,
            &rec,
            json!({"attachments-": [names[0]], "avatar": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["attachments"].as_array().unwrap().len(), 2);
    assert!(!r.text.contains(&names[0]));
    assert_eq!(r.body["avatar"], Value::Null);
    assert_eq!(
        eventually_stored(&app, (2, 0)).await,
        (2, 0),
        "dropped blobs are removed after the commit"
    );
    let (status, _, _) = fetch(&app, &format!("/v1/files/docs/{id}/{avatar}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A name of another record is refused.
    let other = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[file("avatar", "o.png", PNG)],
    )
    .await;
    let theirs = other.body["avatar"].as_str().unwrap();
    let r = app
        .json(Method::PATCH, &rec, json!({"avatar": theirs}))
        .await;
    assert_eq!(
        r.body["errors"]["avatar"]["code"], "unknown_file",
        "{}",
        r.text
    );
    // Deleting the record removes its files.
    let r = app.json(Method::DELETE, &rec, json!(null)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(eventually_stored(&app, (1, 0)).await, (1, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_appends_to_one_record_keep_every_file() {
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[text("title", "t")],
    )
    .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let rec = format!("/v1/collections/docs/records/{id}");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (ct, body) = multipart(&[file(
            "attachments+",
            "part.txt",
            format!("file number {i}").as_bytes(),
        )]);
        let req = app
            .req(Method::PATCH, &rec)
            .header("content-type", ct)
            .body(body);
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let r = app.json(Method::GET, &rec, json!(null)).await;
    let names: Vec<String> = serde_json::from_value(r.body["attachments"].clone()).unwrap();
    assert_eq!(names.len(), 8, "{}", r.text);
    let mut bodies = Vec::new();
    for n in &names {
        let (status, _, body) = fetch(&app, &format!("/v1/files/docs/{id}/{n}"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        bodies.push(String::from_utf8(body).unwrap());
    }
    bodies.sort();
    assert_eq!(bodies.len(), 8);
    bodies.dedup();
    assert_eq!(bodies.len(), 8, "every upload is its own file");
    assert_eq!(stored(&app), (8, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn private_files_need_a_caller_or_a_file_token() {
    let app = TestApp::spawn_clocked(|_| {}).await;
    docs(&app, "", true).await;
    signup(&app, "ann@example.com").await;
    let token = access(&login(&app, "ann@example.com").await);
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        Some(&token),
        &[file("avatar", "me.png", PNG)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    let path = format!("/v1/files/docs/{id}/{}", r.body["avatar"].as_str().unwrap());
    // Public view rule, private field: no file for the unidentified.
    let (status, _, body) = fetch(&app, &path, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&body).contains("file_token_required"));
    let (status, headers, body) = fetch(
        &app,
        &path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PNG);
    assert!(h(&headers, "cache-control").starts_with("private"));
    // A file token for links.
    let t = bearer(&app, &token, Method::POST, "/v1/files/token", None).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    assert_eq!(t.body["expiresIn"], 120);
    let ft = t.body["token"].as_str().unwrap().to_owned();
    let (status, _, body) = fetch(&app, &format!("{path}?token={ft}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PNG);
    // It is no access token.
    let r = bearer(&app, &ft, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // Nor is an access token a file token.
    let (status, _, _) = fetch(&app, &format!("{path}?token={token}"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Anonymous callers get none.
    let r = app.json(Method::POST, "/v1/files/token", json!(null)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // Expired.
    app.advance(Duration::from_secs(121));
    let (status, _, body) = fetch(&app, &format!("{path}?token={ft}"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&body).contains("invalid_file_token"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_view_rule_applies_to_downloads() {
    let app = TestApp::spawn().await;
    docs(&app, "owner = @request.auth.id", false).await;
    let ann = signup(&app, "ann@example.com").await;
    let ann_token = access(&login(&app, "ann@example.com").await);
    signup(&app, "bob@example.com").await;
    let bob_token = access(&login(&app, "bob@example.com").await);
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        Some(&ann_token),
        &[
            text("owner", ann["id"].as_str().unwrap()),
            file("avatar", "me.png", PNG),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!(
        "/v1/files/docs/{}/{}",
        r.body["id"].as_str().unwrap(),
        r.body["avatar"].as_str().unwrap()
    );
    let (status, _, _) = fetch(
        &app,
        &path,
        &[("authorization", &format!("Bearer {ann_token}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = fetch(
        &app,
        &path,
        &[("authorization", &format!("Bearer {bob_token}"))],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch(&app, &path, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob's file token stands for Bob: still no.
    let t = bearer(&app, &bob_token, Method::POST, "/v1/files/token", None).await;
    let ft = t.body["token"].as_str().unwrap();
    let (status, _, _) = fetch(&app, &format!("{path}?token={ft}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob cannot upload into Ann's record either.
    let rec = format!(
        "/v1/collections/docs/records/{}",
        r.body["id"].as_str().unwrap()
    );
    let r = send_parts(
        &app,
        Method::PATCH,
        &rec,
        Some(&bob_token),
        &[file("avatar", "x.png", PNG)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(stored(&app), (1, 0));
    app.shutdown().await;
}

#[tokio::test]
async fn file_field_options_are_checked() {
    let app = TestApp::spawn().await;
    let bad = [
        json!({"name": "f", "type": "file", "maxCount": 0}),
        json!({"name": "f", "type": "file", "mimeTypes": ["not a type"]}),
        json!({"name": "f", "type": "file", "thumbs": ["100"]}),
        json!({"name": "f", "type": "file", "unique": true}),
        json!({"name": "f", "type": "text", "maxSize": 10}),
    ];
    for f in bad {
        let r = app
            .json(
                Method::POST,
                "/v1/collections",
                json!({"name": "c", "fields": [f]}),
            )
            .await;
        // The admin token is needed to create collections; anonymous gets 401, so use it.
        let r = if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
            app.admin(
                Method::POST,
                "/v1/collections",
                Some(json!({"name": "c", "fields": [f]})),
            )
            .await
        } else {
            r
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{f}: {}", r.text);
    }
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "c", "fields": [{"name": "f", "type": "file", "maxCount": 3, "thumbs": ["100x100", "0x300"]}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.shutdown().await;
}

fn png_of(w: u32, h: u32) -> Vec<u8> {
    let img = image::DynamicImage::new_rgb8(w, h);
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

/// A PNG signature and IHDR chunk declaring `w` x `h` pixels, and no pixels.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(b"\x08\x02\0\0\0");
    let mut crc = 0xffff_ffffu32;
    for b in &chunk {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n\0\0\0\r".to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

#[tokio::test]
async fn thumbnails_are_made_once_and_bombs_are_refused() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "pics",
        "fields": [{"name": "photo", "type": "file", "mimeTypes": ["image/*"], "thumbs": ["100x100", "50x0", "0x40"]}],
    }))
    .await;
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/pics/records",
        None,
        &[file("photo", "wide.png", &png_of(400, 200))],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!(
        "/v1/files/pics/{}/{}",
        r.body["id"].as_str().unwrap(),
        r.body["photo"].as_str().unwrap()
    );
    let dims = |b: &[u8]| {
        image::ImageReader::new(std::io::Cursor::new(b))
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap()
    };
    for (size, want) in [
        ("100x100", (100, 100)),
        ("50x0", (50, 25)),
        ("0x40", (80, 40)),
    ] {
        let (status, headers, body) = fetch(&app, &format!("{path}?thumb={size}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{size}");
        assert_eq!(h(&headers, "content-type"), "image/png");
        assert_eq!(dims(&body), want, "{size}");
        assert!(h(&headers, "etag").contains(size));
    }
    assert_eq!(stored(&app), (4, 0), "the original and three thumbnails");
    // Made once: asked again, nothing new is stored and the bytes are the same.
    let (_, _, first) = fetch(&app, &format!("{path}?thumb=100x100"), &[]).await;
    let (_, _, again) = fetch(&app, &format!("{path}?thumb=100x100"), &[]).await;
    assert_eq!(first, again);
    assert_eq!(stored(&app), (4, 0));
    // A size the field does not list.
    let (status, _, body) = fetch(&app, &format!("{path}?thumb=30x30"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("invalid_thumb"));
    // A decompression bomb is refused before anything decodes it.
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/pics/records",
        None,
        &[file("photo", "bomb.png", &png_bomb(100_000, 100_000))],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["errors"]["photo"]["code"], "image_too_large");
    // Deleting the record takes its thumbnails too.
    let rec = format!(
        "/v1/collections/pics/records/{}",
        path.split('/').nth(4).unwrap()
    );
    let d = app.json(Method::DELETE, &rec, json!(null)).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT, "{}", d.text);
    assert_eq!(eventually_stored(&app, (0, 0)).await, (0, 0));
    app.shutdown().await;
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn tus(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Reply {
    let mut r = app.req(method, path).header("tus-resumable", "1.0.0");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    app.send(r.body(body)).await
}

#[tokio::test]
async fn resumable_uploads_follow_tus_and_attach_once() {
    let app = TestApp::spawn_clocked(|c| c.files.max_upload_bytes = 1_000_000).await;
    docs(&app, "", false).await;
    signup(&app, "ann@example.com").await;
    let ann = access(&login(&app, "ann@example.com").await);
    signup(&app, "bob@example.com").await;
    let bob = access(&login(&app, "bob@example.com").await);
    let data: Vec<u8> = [PNG, &vec![7u8; 300_000 - PNG.len()]].concat();

    let o = app.send(app.req(Method::OPTIONS, "/v1/uploads")).await;
    assert_eq!(o.status, StatusCode::NO_CONTENT, "{}", o.text);
    assert_eq!(o.header("tus-version"), Some("1.0.0"));
    assert!(o.header("tus-extension").unwrap().contains("creation"));
    // Refusals of creation.
    let r = app
        .send(
            app.req(Method::POST, "/v1/uploads")
                .bearer_auth(&ann)
                .header("upload-length", "10"),
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text);
    assert_eq!(r.header("tus-version"), Some("1.0.0"));
    let r = tus(
        &app,
        Method::POST,
        "/v1/uploads",
        None,
        &[("upload-length", "10".into())],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = tus(
        &app,
        Method::POST,
        "/v1/uploads",
        Some(&ann),
        &[("upload-length", "2000000".into())],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    let r = tus(&app, Method::POST, "/v1/uploads", Some(&ann), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Creation.
    let r = tus(
        &app,
        Method::POST,
        "/v1/uploads",
        Some(&ann),
        &[
            ("upload-length", data.len().to_string()),
            (
                "upload-metadata",
                format!("filename {},filetype {}", b64("clip.png"), b64("image/png")),
            ),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let at = r.header("location").unwrap().to_owned();
    assert!(at.starts_with("/v1/uploads/"), "{at}");
    assert!(r.header("upload-expires").is_some());
    let id = at.rsplit('/').next().unwrap().to_owned();
    let octets = || ("content-type", "application/offset+octet-stream".to_owned());
    // A first chunk, then refusals of appending.
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&ann),
        &[octets(), ("upload-offset", "0".into())],
        data[..100_000].to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(r.header("upload-offset"), Some("100000"));
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&ann),
        &[octets(), ("upload-offset", "0".into())],
        data[..10].to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "offset_mismatch");
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&ann),
        &[
            ("content-type", "application/json".into()),
            ("upload-offset", "100000".into()),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);
    let r = tus(&app, Method::HEAD, &at, Some(&bob), &[], vec![]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another caller's upload does not exist for them"
    );
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&bob),
        &[octets(), ("upload-offset", "100000".into())],
        data[100_000..].to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // An interrupted request keeps what arrived.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "PATCH {at} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ann}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 100000\r\nContent-Length: 150000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&data[100_000..150_000]).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    let mut offset = String::new();
    for _ in 0..100 {
        let r = tus(&app, Method::HEAD, &at, Some(&ann), &[], vec![]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("upload-length"), Some("300000"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        offset = r.header("upload-offset").unwrap().to_owned();
        if offset == "150000" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        offset, "150000",
        "the bytes before the interruption are kept"
    );
    // Not finished: cannot be attached yet.
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"attachments": [{"upload": id}]})),
    )
    .await;
    assert_eq!(
        r.body["errors"]["attachments"]["code"], "invalid_upload",
        "{}",
        r.text
    );
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&ann),
        &[octets(), ("upload-offset", "150000".into())],
        data[150_000..].to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(r.header("upload-offset"), Some("300000"));
    // Only its owner attaches it, once; a refused write gives it back.
    let r = bearer(
        &app,
        &bob,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"avatar": {"upload": id}})),
    )
    .await;
    assert_eq!(
        r.body["errors"]["avatar"]["code"], "invalid_upload",
        "{}",
        r.text
    );
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"avatar": {"upload": id}})),
    )
    .await;
    assert_eq!(
        r.body["errors"]["avatar"]["code"], "too_large",
        "over the avatar's maxSize: {}",
        r.text
    );
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"attachments": [{"upload": id}], "nope": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"title": "clip", "attachments": [{"upload": id}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let name = r.body["attachments"][0].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("clip_") && name.ends_with(".png"),
        "{name}"
    );
    let (status, headers, body) = fetch(
        &app,
        &format!("/v1/files/docs/{}/{name}", r.body["id"].as_str().unwrap()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);
    assert!(h(&headers, "content-disposition").contains("clip.png"));
    let r2 = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"attachments": [{"upload": id}]})),
    )
    .await;
    assert_eq!(
        r2.body["errors"]["attachments"]["code"], "invalid_upload",
        "attached once: {}",
        r2.text
    );
    let r = tus(&app, Method::HEAD, &at, Some(&ann), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Termination, and expiry.
    let mk = |len: usize| {
        let headers = vec![("upload-length", len.to_string())];
        let app = &app;
        let ann = ann.clone();
        async move {
            tus(
                app,
                Method::POST,
                "/v1/uploads",
                Some(&ann),
                &headers,
                vec![],
            )
            .await
        }
    };
    let gone = mk(10).await.header("location").unwrap().to_owned();
    let r = tus(&app, Method::DELETE, &gone, Some(&ann), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        tus(&app, Method::HEAD, &gone, Some(&ann), &[], vec![])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let old = mk(10).await.header("location").unwrap().to_owned();
    app.advance(Duration::from_secs(24 * 3600 + 1));
    // (Signed in again: the access token expired too.)
    let ann = access(&login(&app, "ann@example.com").await);
    assert_eq!(
        tus(&app, Method::HEAD, &old, Some(&ann), &[], vec![])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    app.shutdown().await;
}

/// The real `tus-js-client` (npm, pinned in `crates/lintel/tests/uploads`) uploads a
/// file in 64 KiB chunks, is interrupted after the first, and resumes from the
/// server's offset. Needs Node.js and `npm ci` there: `.ci/run` does both and sets
/// `TUS_CLIENT_DIR`; without it the test fails when selected with `--ignored`.
#[tokio::test]
#[ignore = "needs Node.js with tus-js-client installed (TUS_CLIENT_DIR)"]
async fn tus_js_client_uploads_in_interrupted_chunks() {
    let dir = std::env::var("TUS_CLIENT_DIR")
        .expect("TUS_CLIENT_DIR names the folder with tus.mjs and node_modules");
    let app = TestApp::spawn().await;
    docs(&app, "", false).await;
    signup(&app, "ann@example.com").await;
    let token = access(&login(&app, "ann@example.com").await);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file_path = app.dir.path().join("clip.bin");
    std::fs::write(&file_path, &data).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(format!("{dir}/tus.mjs"))
        .arg(app.url("/v1/uploads"))
        .arg(&token)
        .arg(&file_path)
        .arg("65536")
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "tus.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumedAt"], 1, "{report}");
    assert_eq!(
        report["chunks"], 5,
        "300000 bytes in 64 KiB chunks: {report}"
    );
    let url = report["url"].as_str().unwrap();
    let id = url.rsplit('/').next().unwrap();
    let r = bearer(
        &app,
        &token,
        Method::POST,
        "/v1/collections/docs/records",
        Some(json!({"attachments": [{"upload": id}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let name = r.body["attachments"][0].as_str().unwrap();
    assert!(
        name.starts_with("movie_clip_") && name.ends_with(".bin"),
        "{name}"
    );
    let (status, headers, body) = fetch(
        &app,
        &format!("/v1/files/docs/{}/{name}", r.body["id"].as_str().unwrap()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data, "the bytes arrived whole and in order");
    assert!(h(&headers, "content-disposition").contains("movie%20clip.bin"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_sweep_removes_files_no_record_names_after_an_hour() {
    let app = TestApp::spawn_clocked(|_| {}).await;
    docs(&app, "", false).await;
    let kept = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[file("avatar", "kept.png", PNG)],
    )
    .await;
    assert_eq!(kept.status, StatusCode::CREATED, "{}", kept.text);
    let lost = send_parts(
        &app,
        Method::POST,
        "/v1/collections/docs/records",
        None,
        &[file("avatar", "lost.png", PNG)],
    )
    .await;
    assert_eq!(stored(&app), (2, 0));
    // A crash after a file was kept but before its record committed leaves a row and
    // bytes that no record names: the same as unnaming a file behind the log's back.
    let state = &app.running().state;
    let mut sql = lintel::store::Sql::new(state.store.dialect());
    sql.push("UPDATE docs SET avatar = NULL WHERE id = ")
        .bind(lintel::store::SqlValue::Text(
            lost.body["id"].as_str().unwrap().to_owned(),
        ));
    state
        .store
        .write(vec![lintel::store::WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .unwrap();
    // Within the hour it may be an upload about to commit: left alone.
    let report = lintel::files::sweep(state).await;
    assert_eq!(report["unnamedFiles"], 0, "{report}");
    assert_eq!(stored(&app), (2, 0));
    app.advance(Duration::from_secs(3601));
    let report = lintel::files::sweep(state).await;
    assert_eq!(report["unnamedFiles"], 1, "{report}");
    assert_eq!(stored(&app), (1, 0), "only the named file is left");
    let path = format!(
        "/v1/files/docs/{}/{}",
        kept.body["id"].as_str().unwrap(),
        kept.body["avatar"].as_str().unwrap()
    );
    let (status, _, body) = fetch(&app, &path, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PNG);
    app.shutdown().await;
}

#[tokio::test]
async fn kill_9_mid_upload_keeps_no_record_and_housekeeping_clears_the_rest() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut env = vec![
        ("LINTEL_ADMIN_TOKEN", crate::common::ADMIN_TOKEN.to_owned()),
        ("LINTEL_STORE__PURGE_INTERVAL_SECS", "1".to_owned()),
        ("LINTEL_JOBS__POLL_MS", "50".to_owned()),
        // A housekeeping job the killed process held comes back soon.
        ("LINTEL_JOBS__LEASE_SECONDS", "2".to_owned()),
    ];
    let db_dir = tempfile::tempdir().unwrap();
    if crate::common::postgres_url().is_some() {
        let url = crate::common::config(db_dir.path()).await.database_url.0;
        env.push(("LINTEL_DATABASE_URL", url));
    }
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let base = format!("http://{}", served.addr);
    let r = client
        .post(format!("{base}/v1/collections"))
        .bearer_auth(crate::common::ADMIN_TOKEN)
        .json(&json!({"name": "docs", "rules": {"create": "", "list": "", "view": ""}, "fields": [{"name": "title", "type": "text"}, {"name": "attachments", "type": "file", "maxCount": 5}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A multipart create whose file is half sent when the process dies.
    let boundary = "kill9boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhalf\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"attachments\"; filename=\"big.bin\"\r\n\r\n"
    );
    let total = head.len() + 4_000_000;
    let mut s = tokio::net::TcpStream::connect(served.addr.as_str())
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /v1/collections/docs/records HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n{head}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&vec![b'z'; 1_000_000]).await.unwrap();
    s.flush().await.unwrap();
    let staging = data.join("files").join("tmp");
    let mut staged = Vec::new();
    for _ in 0..200 {
        staged = std::fs::read_dir(&staging)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        if staged
            .first()
            .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(staged.len(), 1, "the upload is being staged");
    let mut child = served.child;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    drop(s);
    // The leftover is an hour old by the time housekeeping judges it.
    let old = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&staged[0])
        .status()
        .unwrap();
    assert!(old.success());
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    let base = format!("http://{}", served.addr);
    let list: Value = client
        .get(format!("{base}/v1/collections/docs/records"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["totalItems"], 0,
        "no record of the killed request: {list}"
    );
    let mut left = 1;
    for _ in 0..600 {
        left = std::fs::read_dir(&staging).unwrap().count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "housekeeping removed the staged leftover");
    let blobs = std::fs::read_dir(data.join("files").join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "nothing was kept");
    let mut child = served.child;
    let _ = child.kill().await;
    crate::common::drop_database(db_dir.path()).await;
}

/// The blob key of a kept file, read from its metadata row.
#[cfg(feature = "s3")]
async fn blob_key(app: &TestApp, name: &str) -> String {
    let state = &app.running().state;
    let mut sql = lintel::store::Sql::new(state.store.dialect());
    sql.push("SELECT blob FROM _lintel_files WHERE name = ")
        .bind(lintel::store::SqlValue::Text(name.to_owned()));
    let rows = state.store.query_rows(sql).await.unwrap();
    rows[0][0].as_str().unwrap().to_owned()
}

/// Files in S3-compatible storage: a real S3 server (moto, from PyPI, started by
/// `.ci/run`) at `LINTEL_TEST_S3_ENDPOINT` with the bucket `lintel-test`; each run
/// keeps its objects under its own prefix. Built with `--features s3`.
#[cfg(feature = "s3")]
#[tokio::test]
#[ignore = "needs an S3-compatible server (LINTEL_TEST_S3_ENDPOINT) and --features s3"]
async fn s3_backend_keeps_serves_thumbnails_and_removes_files() {
    let endpoint = std::env::var("LINTEL_TEST_S3_ENDPOINT")
        .expect("LINTEL_TEST_S3_ENDPOINT names the S3-compatible server");
    let prefix = format!("run-{}", lintel::ids::record_id());
    let app = TestApp::spawn_with(move |c| {
        c.files.backend = "s3".into();
        c.files.s3.bucket = "lintel-test".into();
        c.files.s3.endpoint = endpoint;
        c.files.s3.allow_http = true;
        c.files.s3.access_key_id = "test".into();
        c.files.s3.secret_access_key = lintel::config::Secret("test".into());
        c.files.s3.prefix = prefix;
    })
    .await;
    app.collection(json!({
        "name": "pics",
        "fields": [{"name": "photo", "type": "file", "thumbs": ["50x50"]}, {"name": "docs", "type": "file", "maxCount": 5}],
    }))
    .await;
    let big: Vec<u8> = (0..12_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/pics/records",
        None,
        &[
            file("photo", "p.png", &png_of(200, 100)),
            file("docs", "big.bin", &big),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let photo = r.body["photo"].as_str().unwrap().to_owned();
    let doc = r.body["docs"][0].as_str().unwrap().to_owned();
    assert_eq!(stored(&app), (0, 0), "nothing on the local disk");
    let (status, _, body) = fetch(&app, &format!("/v1/files/pics/{id}/{doc}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == big,
        "the 12 MB file comes back whole (a multipart upload to S3)"
    );
    let (status, headers, body) = fetch(
        &app,
        &format!("/v1/files/pics/{id}/{doc}"),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &big[1000..2000]);
    assert_eq!(
        h(&headers, "content-range"),
        format!("bytes 1000-1999/{}", big.len())
    );
    let (status, _, body) = fetch(
        &app,
        &format!("/v1/files/pics/{id}/{photo}?thumb=50x50"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 50);
    let state = &app.running().state;
    let photo_key = blob_key(&app, &photo).await;
    let doc_key = blob_key(&app, &doc).await;
    let thumb_key = lintel::files::thumbs::key(&photo_key, 50, 50);
    assert!(state.files.blobs.size(&thumb_key).await.unwrap().is_some());
    // Deleting the record removes its objects and the thumbnail's.
    let d = app
        .json(
            Method::DELETE,
            &format!("/v1/collections/pics/records/{id}"),
            json!(null),
        )
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let mut left = 3;
    for _ in 0..200 {
        left = 0;
        for k in [&photo_key, &doc_key, &thumb_key] {
            if state.files.blobs.size(k).await.unwrap().is_some() {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, 0, "objects removed after the commit");
    app.shutdown().await;
}

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

fn keys(list: &[&str]) -> Vec<lintel::config::Secret> {
    list.iter()
        .map(|k| lintel::config::Secret((*k).to_owned()))
        .collect()
}

/// Every blob on disk, read whole.
fn blobs_on_disk(app: &TestApp) -> Vec<Vec<u8>> {
    fn walk(p: &std::path::Path, out: &mut Vec<Vec<u8>>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = Vec::new();
    walk(&app.dir.path().join("files").join("blobs"), &mut out);
    out
}

#[tokio::test]
async fn files_are_encrypted_at_rest_and_keys_rotate_without_rewriting() {
    // No housekeeping job: it re-wraps keys on its own, racing the counts below.
    let app = TestApp::spawn_with(|c| {
        c.files.encryption_keys = keys(&[KEY_A]);
        c.store.purge_interval_secs = 0;
    })
    .await;
    app.collection(json!({
        "name": "vault",
        "fields": [{"name": "doc", "type": "file"}, {"name": "pic", "type": "file", "thumbs": ["40x40"]}],
    }))
    .await;
    let secret: Vec<u8> = b"TOP SECRET PAYLOAD "
        .iter()
        .copied()
        .cycle()
        .take(200_000)
        .collect();
    let r = send_parts(
        &app,
        Method::POST,
        "/v1/collections/vault/records",
        None,
        &[
            file("doc", "plans.txt", &secret),
            file("pic", "p.png", &png_of(120, 80)),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let doc = format!("/v1/files/vault/{id}/{}", r.body["doc"].as_str().unwrap());
    let pic = format!("/v1/files/vault/{id}/{}", r.body["pic"].as_str().unwrap());
    // On disk: sealed bytes, nothing of the plain text.
    let on_disk = blobs_on_disk(&app);
    assert_eq!(on_disk.len(), 2);
    for b in &on_disk {
        assert!(
            !b.windows(10).any(|w| w == b"TOP SECRET"),
            "a blob holds plain text"
        );
    }
    assert!(
        on_disk.iter().any(|b| b.len() == 200_000 + 4 * 16),
        "four sealed 64 KiB chunks with tags"
    );
    // Served plain, whole and by ranges across chunk edges.
    let (status, _, body) = fetch(&app, &doc, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == secret);
    for (range, from, to) in [
        ("bytes=65530-65545", 65530, 65546),
        ("bytes=131000-140000", 131_000, 140_001),
        ("bytes=-10", 199_990, 200_000),
    ] {
        let (status, headers, body) = fetch(&app, &doc, &[("range", range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body, &secret[from..to], "{range}");
        assert_eq!(h(&headers, "content-length"), (to - from).to_string());
    }
    let (status, _, body) = fetch(&app, &format!("{pic}?thumb=40x40"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 40);
    let (_, _, again) = fetch(&app, &format!("{pic}?thumb=40x40"), &[]).await;
    assert_eq!(
        body, again,
        "the kept (sealed) thumbnail opens to the same bytes"
    );
    // Rotation: B first, A still opens; re-wrapping touches no file's bytes.
    let before = blobs_on_disk(&app);
    let dir = app.stop_keep_dir().await;
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.files.encryption_keys = keys(&[KEY_B, KEY_A]);
    cfg.store.purge_interval_secs = 0;
    let app = TestApp::start_in(dir, cfg).await;
    let (_, _, body) = fetch(&app, &doc, &[]).await;
    assert!(body == secret, "the old key still opens");
    let r = app.admin(Method::POST, "/v1/files/rewrap-keys", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["rewrapped"], 2);
    let r = app.admin(Method::POST, "/v1/files/rewrap-keys", None).await;
    assert_eq!(r.body["rewrapped"], 0, "nothing left to move");
    let mut after = blobs_on_disk(&app);
    let mut before = before;
    before.sort();
    after.sort();
    assert!(before == after, "no file was rewritten");
    // A alone is retired: B opens everything.
    let dir = app.stop_keep_dir().await;
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.files.encryption_keys = keys(&[KEY_B]);
    cfg.store.purge_interval_secs = 0;
    let app = TestApp::start_in(dir, cfg).await;
    let (status, _, body) = fetch(&app, &doc, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == secret);
    let (status, _, _) = fetch(&app, &format!("{pic}?thumb=40x40"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Without the key, a sealed file is an error, never its sealed bytes.
    let dir = app.stop_keep_dir().await;
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.store.purge_interval_secs = 0;
    let app = TestApp::start_in(dir, cfg).await;
    let (status, _, body) = fetch(&app, &doc, &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.windows(10).any(|w| w == b"TOP SECRET"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_resumable_upload_given_back_after_a_failed_write_is_plain_again() {
    let app = TestApp::spawn_with(|c| c.files.encryption_keys = keys(&[KEY_A])).await;
    app.collection(json!({
        "name": "vault",
        "fields": [{"name": "title", "type": "text", "unique": true}, {"name": "doc", "type": "file"}],
        "rules": {"create": "", "update": "", "view": "", "list": ""},
    }))
    .await;
    signup(&app, "ann@example.com").await;
    let ann = access(&login(&app, "ann@example.com").await);
    let data: Vec<u8> = b"plain upload bytes "
        .iter()
        .copied()
        .cycle()
        .take(70_000)
        .collect();
    let r = tus(
        &app,
        Method::POST,
        "/v1/uploads",
        Some(&ann),
        &[("upload-length", data.len().to_string())],
        vec![],
    )
    .await;
    let at = r.header("location").unwrap().to_owned();
    let id = at.rsplit('/').next().unwrap().to_owned();
    let r = tus(
        &app,
        Method::PATCH,
        &at,
        Some(&ann),
        &[
            ("content-type", "application/offset+octet-stream".into()),
            ("upload-offset", "0".into()),
        ],
        data.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/vault/records",
        Some(json!({"title": "taken"})),
    )
    .await;
    // The write fails at commit (a unique title) after the upload was kept and sealed.
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/vault/records",
        Some(json!({"title": "taken", "doc": {"upload": id}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let back = std::fs::read(app.dir.path().join("files").join("uploads").join(&id)).unwrap();
    assert!(back == data, "the upload holds its plain bytes again");
    let r = bearer(
        &app,
        &ann,
        Method::POST,
        "/v1/collections/vault/records",
        Some(json!({"title": "free", "doc": {"upload": id}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, _, body) = fetch(
        &app,
        &format!(
            "/v1/files/vault/{}/{}",
            r.body["id"].as_str().unwrap(),
            r.body["doc"].as_str().unwrap()
        ),
        &[],
    )
    .await;
    assert!(body == data);
    assert_eq!(blobs_on_disk(&app).len(), 1);
    app.shutdown().await;
}
