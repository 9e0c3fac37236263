//! The OpenAPI document describes each collection from its definition and follows
//! schema changes; request bodies built from the document's own bounds are accepted;
//! `lintel types` writes TypeScript from the store's catalog.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::common::{SmtpSink, TestApp, mailed_token};

/// A collection with every field type and option.
fn kitchen() -> Value {
    json!({
        "name": "kitchen",
        "fields": [
            {"name": "title", "type": "text", "required": true, "min": 3, "max": 40, "pattern": "[A-Za-z ]+"},
            {"name": "note", "type": "text"},
            {"name": "code", "type": "text", "unique": true},
            {"name": "views", "type": "integer", "required": true, "min": 0, "max": 1000, "default": 0},
            {"name": "score", "type": "number", "min": -1.5, "max": 2.5},
            {"name": "flag", "type": "bool", "default": false},
            {"name": "contact", "type": "email"},
            {"name": "site", "type": "url"},
            {"name": "at", "type": "datetime"},
            {"name": "cat", "type": "select", "values": ["news", "tech"]},
            {"name": "meta", "type": "json", "max": 1000},
            {"name": "author", "type": "relation", "collection": "authors"},
            {"name": "coauthors", "type": "relation", "collection": "authors", "multiple": true, "max": 3},
            {"name": "secret", "type": "text", "hidden": true},
            {"name": "level", "type": "integer", "protected": true}
        ]
    })
}

async fn document(app: &TestApp) -> Value {
    let r = app.get("/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn collection_schemas_state_each_fields_bounds_and_follow_schema_changes() {
    let app = TestApp::spawn().await;
    app.collection(
        json!({"name": "authors", "fields": [{"name": "name", "type": "text", "required": true}]}),
    )
    .await;
    app.collection(kitchen()).await;
    let doc = document(&app).await;
    let s = &doc["components"]["schemas"];

    let create = &s["KitchenCreate"];
    assert_eq!(create["required"], json!(["title"]), "{create}");
    assert_eq!(create["additionalProperties"], json!(false));
    let p = &create["properties"];
    assert_eq!(p["title"]["minLength"], json!(3));
    assert_eq!(p["title"]["maxLength"], json!(40));
    assert_eq!(p["title"]["pattern"], json!("^(?:[A-Za-z ]+)$"));
    // Optional members may be null, with their own bounds in the first branch.
    assert_eq!(p["views"]["anyOf"][0]["minimum"], json!(0.0));
    assert_eq!(p["views"]["anyOf"][0]["maximum"], json!(1000.0));
    assert_eq!(p["views"]["default"], json!(0));
    assert_eq!(p["score"]["anyOf"][0]["type"], json!("number"));
    assert_eq!(p["score"]["anyOf"][0]["minimum"], json!(-1.5));
    assert_eq!(p["flag"]["anyOf"][0]["type"], json!("boolean"));
    assert_eq!(p["contact"]["anyOf"][0]["format"], json!("email"));
    assert_eq!(p["site"]["anyOf"][0]["format"], json!("uri"));
    assert_eq!(p["at"]["anyOf"][0]["format"], json!("date-time"));
    assert_eq!(p["cat"]["anyOf"][0]["enum"], json!(["news", "tech"]));
    assert!(
        p["meta"]["anyOf"][0]["description"]
            .as_str()
            .unwrap()
            .contains("1000 bytes")
    );
    assert_eq!(
        p["author"]["anyOf"][0]["pattern"],
        json!("^[A-Za-z0-9_-]{1,64}$")
    );
    assert_eq!(p["coauthors"]["anyOf"][0]["maxItems"], json!(3));
    assert_eq!(p["level"]["x-lintel-superuser-only"], json!(true));
    for name in ["KitchenCreate", "KitchenUpdate", "KitchenRecord"] {
        assert!(
            s[name]["properties"]["secret"].is_null(),
            "hidden field in {name}"
        );
    }
    assert!(
        !doc.to_string().contains("\"secret\""),
        "a hidden field appears"
    );
    assert!(
        s["KitchenUpdate"]["required"].is_null(),
        "nothing required in a patch"
    );
    let record = &s["KitchenRecord"];
    for f in ["id", "created", "updated", "version", "title", "coauthors"] {
        assert!(
            record["required"].as_array().unwrap().contains(&json!(f)),
            "{f}"
        );
    }
    // The built-in users collection (auth): email and password with the length bounds.
    assert_eq!(s["UsersCreate"]["required"], json!(["email", "password"]));
    assert_eq!(
        s["UsersCreate"]["properties"]["password"]["minLength"],
        json!(10)
    );
    assert_eq!(
        s["UsersCreate"]["properties"]["password"]["maxLength"],
        json!(256)
    );
    assert!(s["UsersCreate"]["properties"]["passwordHash"].is_null());
    // Per-collection paths with typed bodies.
    let post = &doc["paths"]["/v1/collections/kitchen/records"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        json!("#/components/schemas/KitchenCreate")
    );
    let patch = &doc["paths"]["/v1/collections/kitchen/records/{id}"]["patch"];
    assert_eq!(
        patch["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        json!("#/components/schemas/KitchenUpdate")
    );
    // Static bodies name the live collections.
    let scopes = s["NewKey"]["properties"]["scopes"]["items"]["pattern"]
        .as_str()
        .unwrap();
    assert!(
        scopes.contains("kitchen") && scopes.contains("authors"),
        "{scopes}"
    );
    assert!(s["FieldSpec"]["oneOf"].as_array().unwrap().len() >= 10);
    assert_eq!(
        s["LoginRequest"]["properties"]["mode"]["enum"],
        json!(["token", "cookie"])
    );

    // The document follows an alter and a new collection; the same text is served
    // until then (built once per catalog).
    let again = app.get("/v1/openapi.json").await;
    assert_eq!(again.text, serde_json::to_string(&doc).unwrap());
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/kitchen",
            Some(json!({"addFields": [{"name": "mood", "type": "select", "values": ["calm", "busy"], "required": true}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.collection(json!({"name": "notes", "kind": "document",
        "schema": {"type": "object", "required": ["body"], "properties": {"body": {"type": "string"}}}}))
        .await;
    let doc = document(&app).await;
    let s = &doc["components"]["schemas"];
    assert_eq!(
        s["KitchenCreate"]["properties"]["mood"]["enum"],
        json!(["calm", "busy"])
    );
    assert_eq!(s["KitchenCreate"]["required"], json!(["title", "mood"]));
    assert_eq!(s["NotesCreate"]["allOf"][1]["required"], json!(["body"]));
    assert!(doc["paths"]["/v1/collections/notes/records/{id}"]["put"].is_object());

    // The TypeScript served at /v1/types.ts follows too.
    let ts = app.get("/v1/types.ts").await;
    assert_eq!(ts.status, StatusCode::OK);
    assert!(
        ts.text.contains("mood: \"calm\" | \"busy\";"),
        "{}",
        ts.text
    );
    assert!(
        ts.text.contains("export interface UsersCreate {"),
        "{}",
        ts.text
    );
    app.shutdown().await;
}

// ---- A small generator of valid values from a JSON Schema -------------------------

/// Characters for strings that only have a length: varied, so they are not a common
/// password.
const FILL: &str = "Lq7vZ2mW9xR4tN8bKc3Yh6Jd5Fs1Gp0Hr";

enum Atom {
    Ch(char),
    Group(Vec<Vec<(Atom, usize)>>),
}

/// A string matching a regular expression of the subset the document uses (groups,
/// alternation, classes, escapes, `? * + {n,m}`): the first alternative, the lowest
/// count (three for `+`), the first character of a class.
fn from_pattern(p: &str) -> String {
    let c: Vec<char> = p.chars().collect();
    let mut i = 0;
    let alts = parse_alts(&c, &mut i);
    let mut out = String::new();
    emit(&alts, &mut out);
    out
}

fn parse_alts(c: &[char], i: &mut usize) -> Vec<Vec<(Atom, usize)>> {
    let mut alts = vec![Vec::new()];
    while *i < c.len() {
        let atom = match c[*i] {
            ')' => {
                *i += 1;
                return alts;
            }
            '|' => {
                *i += 1;
                alts.push(Vec::new());
                continue;
            }
            '^' | '$' => {
                *i += 1;
                continue;
            }
            '(' => {
                *i += 1;
                if c.get(*i) == Some(&'?') {
                    *i += 2;
                }
                Atom::Group(parse_alts(c, i))
            }
            '[' => {
                *i += 1;
                Atom::Ch(class(c, i))
            }
            '\\' => {
                *i += 2;
                Atom::Ch(match c[*i - 1] {
                    'S' | 'w' => 'a',
                    's' => ' ',
                    'd' => '0',
                    other => other,
                })
            }
            '.' => {
                *i += 1;
                Atom::Ch('a')
            }
            ch => {
                *i += 1;
                Atom::Ch(ch)
            }
        };
        let n = match c.get(*i) {
            Some('?') => {
                *i += 1;
                1
            }
            Some('*') => {
                *i += 1;
                0
            }
            Some('+') => {
                *i += 1;
                3
            }
            Some('{') => {
                let end = c[*i..].iter().position(|&x| x == '}').unwrap() + *i;
                let inner: String = c[*i + 1..end].iter().collect();
                *i = end + 1;
                inner.split(',').next().unwrap().parse().unwrap()
            }
            _ => 1,
        };
        alts.last_mut().unwrap().push((atom, n));
    }
    alts
}

fn class(c: &[char], i: &mut usize) -> char {
    let negated = c.get(*i) == Some(&'^');
    if negated {
        *i += 1;
    }
    let mut ranges = Vec::new();
    while c[*i] != ']' {
        let mut lo = c[*i];
        if lo == '\\' {
            *i += 1;
            lo = c[*i];
        }
        *i += 1;
        if c[*i] == '-' && c[*i + 1] != ']' {
            ranges.push((lo, c[*i + 1]));
            *i += 2;
        } else {
            ranges.push((lo, lo));
        }
    }
    *i += 1;
    if negated {
        ['a', 'A', '0', 'x']
            .into_iter()
            .find(|ch| !ranges.iter().any(|(lo, hi)| lo <= ch && ch <= hi))
            .unwrap_or('a')
    } else {
        ranges[0].0
    }
}

fn emit(alts: &[Vec<(Atom, usize)>], out: &mut String) {
    for (atom, n) in &alts[0] {
        for _ in 0..*n {
            match atom {
                Atom::Ch(ch) => out.push(*ch),
                Atom::Group(g) => emit(g, out),
            }
        }
    }
}

/// A minimal valid value of `schema`: required members only, the first enum member,
/// the shortest string the bounds allow. `given` supplies what no schema can know
/// (mailed tokens, passwords of existing accounts), by member name.
fn generate(doc: &Value, schema: &Value, given: &HashMap<&str, Value>) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return generate(doc, &doc["components"]["schemas"][name], given);
    }
    if let Some(v) = schema.get("const") {
        return v.clone();
    }
    if let Some(v) = schema["enum"].as_array() {
        return v[0].clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[key].as_array() {
            let branch = &branches[0];
            if schema["type"] == "object" || schema["properties"].is_object() {
                // Object-level branches add required members and narrow properties.
                let mut merged = schema.clone();
                merged.as_object_mut().unwrap().remove(key);
                let mut req: Vec<Value> =
                    merged["required"].as_array().cloned().unwrap_or_default();
                req.extend(branch["required"].as_array().cloned().unwrap_or_default());
                merged["required"] = Value::Array(req);
                if let Some(props) = branch["properties"].as_object() {
                    for (k, v) in props {
                        let base = merged["properties"][k].clone();
                        let mut narrowed = if base.is_object() { base } else { json!({}) };
                        for (kk, vv) in v.as_object().unwrap() {
                            narrowed[kk] = vv.clone();
                        }
                        // A const or a $ref replaces the base type entirely.
                        if v.get("const").is_some() || v.get("$ref").is_some() {
                            narrowed = v.clone();
                        }
                        merged["properties"][k] = narrowed;
                    }
                }
                return generate(doc, &merged, given);
            }
            return generate(doc, branch, given);
        }
    }
    let ty = match &schema["type"] {
        Value::Array(ts) => ts[0].clone(),
        t => t.clone(),
    };
    match ty.as_str() {
        Some("object") | None if schema["properties"].is_object() => {
            let mut out = Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                let v = match given.get(name) {
                    Some(v) => v.clone(),
                    None => generate(doc, &schema["properties"][name], given),
                };
                out.insert(name.to_owned(), v);
            }
            Value::Object(out)
        }
        Some("object") => json!({}),
        Some("array") => {
            let n = schema["minItems"].as_u64().unwrap_or(0) as usize;
            Value::Array(
                (0..n)
                    .map(|_| generate(doc, &schema["items"], given))
                    .collect(),
            )
        }
        Some("string") => {
            if let Some(p) = schema["pattern"].as_str() {
                return Value::String(from_pattern(p));
            }
            match schema["format"].as_str() {
                Some("email") => return json!("ann@example.com"),
                Some("date-time") => return json!("2030-01-01T00:00:00Z"),
                Some("uri") => return json!("https://example.com/"),
                _ => {}
            }
            let n = schema["minLength"].as_u64().unwrap_or(0) as usize;
            Value::String(FILL.chars().cycle().take(n).collect())
        }
        Some("integer") | Some("number") => schema["minimum"]
            .as_f64()
            .map(|m| json!(m.ceil() as i64))
            .unwrap_or(json!(0)),
        Some("boolean") => json!(false),
        _ => Value::Null,
    }
}

/// The request body of an operation, generated and checked against the document.
fn body_for(doc: &Value, path: &str, method: &str, given: &HashMap<&str, Value>) -> Value {
    let schema =
        &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} has a body schema");
    let body = generate(doc, schema, given);
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path}: generated {body} is invalid: {errors:?}"
    );
    body
}

#[tokio::test]
async fn request_bodies_built_from_the_documents_bounds_are_accepted() {
    let smtp = SmtpSink::start().await;
    let port = smtp.port;
    let app = TestApp::spawn_with(move |c| {
        c.mail.smtp_host = "127.0.0.1".into();
        c.mail.smtp_port = port;
        c.mail.from = "lintel@example.com".into();
        c.mail.smtp_tls = "none".into();
    })
    .await;
    app.collection(
        json!({"name": "authors", "fields": [{"name": "name", "type": "text", "required": true}]}),
    )
    .await;
    app.collection(kitchen()).await;
    let doc = document(&app).await;
    let none = HashMap::new();
    let ok = |r: &crate::common::Reply, what: &str| {
        assert!(
            r.status.is_success(),
            "{what}: a body valid by the document was refused: {} {}",
            r.status,
            r.text
        );
    };

    // Sign-up (auth record create), sign-in, and the user's token.
    let signup = body_for(&doc, "/v1/collections/users/records", "post", &none);
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            signup.clone(),
        )
        .await;
    ok(&r, "users create");
    let email = signup["email"].as_str().unwrap().to_lowercase();
    let password = signup["password"].clone();
    let login = body_for(&doc, "/v1/auth/login", "post", &none);
    let r = app.json(Method::POST, "/v1/auth/login", login).await;
    // Schema-valid but unknown credentials: 401, never 400.
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let given: HashMap<&str, Value> =
        HashMap::from([("email", json!(email)), ("password", password.clone())]);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            body_for(&doc, "/v1/auth/login", "post", &given),
        )
        .await;
    ok(&r, "login");
    let token = r.body["accessToken"].as_str().unwrap().to_owned();
    let as_user = |m: Method, path: &str, body: Value| {
        app.send(app.req(m, path).bearer_auth(&token).json(&body))
    };

    // API keys.
    let key = body_for(&doc, "/v1/auth/api-keys", "post", &none);
    ok(
        &as_user(Method::POST, "/v1/auth/api-keys", key).await,
        "api-keys",
    );

    // Records: create, replace, patch (the record-id pattern makes ids of the form).
    let path = "/v1/collections/kitchen/records";
    let r = app
        .json(Method::POST, path, body_for(&doc, path, "post", &none))
        .await;
    ok(&r, "kitchen create");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let item = "/v1/collections/kitchen/records/{id}";
    let href = format!("{path}/{id}");
    ok(
        &app.json(Method::PUT, &href, body_for(&doc, item, "put", &none))
            .await,
        "kitchen replace",
    );
    ok(
        &app.json(Method::PATCH, &href, body_for(&doc, item, "patch", &none))
            .await,
        "kitchen patch",
    );

    // Batch.
    let batch = body_for(&doc, "/v1/batch", "post", &none);
    ok(&app.json(Method::POST, "/v1/batch", batch).await, "batch");

    // Collections: create and alter (admin).
    let spec = body_for(&doc, "/v1/collections", "post", &none);
    let r = app.admin(Method::POST, "/v1/collections", Some(spec)).await;
    ok(&r, "collection create");
    let patch = body_for(&doc, "/v1/collections/{name}", "patch", &none);
    ok(
        &app.admin(Method::PATCH, "/v1/collections/kitchen", Some(patch))
            .await,
        "collection alter",
    );

    // The confirm-* routes, with the tokens the mail brought.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-verification",
            json!({"email": email}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let t = mailed_token(&smtp.message(0).await);
    let given = HashMap::from([("token", json!(t))]);
    let body = body_for(&doc, "/v1/auth/confirm-verification", "post", &given);
    ok(
        &app.json(Method::POST, "/v1/auth/confirm-verification", body)
            .await,
        "confirm-verification",
    );

    let r = as_user(
        Method::POST,
        "/v1/auth/request-email-change",
        json!({"newEmail": "new@example.com"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let t = mailed_token(&smtp.message(1).await);
    let given = HashMap::from([("token", json!(t)), ("password", password)]);
    let body = body_for(&doc, "/v1/auth/confirm-email-change", "post", &given);
    ok(
        &app.json(Method::POST, "/v1/auth/confirm-email-change", body)
            .await,
        "confirm-email-change",
    );

    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-password-reset",
            json!({"email": "new@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let t = mailed_token(&smtp.message(2).await);
    let given = HashMap::from([("token", json!(t))]);
    let body = body_for(&doc, "/v1/auth/confirm-password-reset", "post", &given);
    ok(
        &app.json(Method::POST, "/v1/auth/confirm-password-reset", body)
            .await,
        "confirm-password-reset",
    );
    app.shutdown().await;
}

#[test]
fn lintel_types_writes_typescript_from_the_stores_catalog() {
    let data = tempfile::tempdir().unwrap();
    let lintel = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lintel"))
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("LINTEL_TEST_DATABASE_URL")
            .env_remove("LINTEL_TEST_OIDC_DIR")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created = lintel(&["migrate", "new", "kitchen"]);
    let path = created.trim().trim_start_matches("created ").to_owned();
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut k = kitchen();
    k["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["type"] != "relation");
    m["up"] = json!([{"op": "createCollection", "collection": k}]);
    m["down"] = json!([{"op": "dropCollection", "name": "kitchen"}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    lintel(&["migrate", "up"]);

    let file = data.path().join("types.ts");
    lintel(&[
        "types",
        "--lang",
        "typescript",
        "--out",
        file.to_str().unwrap(),
    ]);
    let ts = std::fs::read_to_string(&file).unwrap();
    for expected in [
        "export interface KitchenRecord extends SystemFields {",
        "export interface KitchenCreate {",
        "export interface KitchenUpdate {",
        "  title: string;",
        "  cat?: \"news\" | \"tech\" | null;",
        "  cat: \"news\" | \"tech\" | null;",
        "  views?: number | null;",
        "  meta: unknown;",
        "/** min length 3; max length 40; pattern `[A-Za-z ]+` */",
        "/** integer; superusers only */",
        "  kitchen: KitchenRecord;",
    ] {
        assert!(ts.contains(expected), "missing {expected:?} in\n{ts}");
    }
    assert!(!ts.contains("secret"), "a hidden field in\n{ts}");
    // Without --out, the same text goes to standard output.
    assert_eq!(lintel(&["types"]), ts);
}
