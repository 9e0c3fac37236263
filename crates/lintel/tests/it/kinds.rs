//! Field kinds: the `geoPoint` kind, added through `schema/kinds.rs` alone, behaves like
//! every other kind end to end (spec checks, value checks and normalisation, storage on
//! both stores, filters on its members, sorting refused, OpenAPI and TypeScript).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::TestApp;

async fn places(app: &TestApp) {
    app.collection(json!({
        "name": "places",
        "fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "where", "type": "geoPoint"},
        ],
    }))
    .await;
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn geo_points_are_stored_normalised_and_read_back() {
    let app = TestApp::spawn().await;
    places(&app).await;
    let berlin = app
        .create(
            "places",
            json!({"name": "Berlin", "where": {"lon": 13.405, "lat": 52.52}}),
        )
        .await;
    assert_eq!(berlin["where"], json!({"lat": 52.52, "lon": 13.405}));
    let origin = app
        .create(
            "places",
            json!({"name": "Null Island", "where": {"lat": 0, "lon": 0}}),
        )
        .await;
    assert_eq!(origin["where"], json!({"lat": 0.0, "lon": 0.0}));
    let nowhere = app.create("places", json!({"name": "Nowhere"})).await;
    assert_eq!(nowhere["where"], Value::Null);

    let href = format!(
        "/v1/collections/places/records/{}",
        berlin["id"].as_str().unwrap()
    );
    let got = app.get(&href).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["where"], json!({"lat": 52.52, "lon": 13.405}));

    let moved = app
        .json(
            Method::PATCH,
            &href,
            json!({"where": {"lat": -90, "lon": 180}}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["where"], json!({"lat": -90.0, "lon": 180.0}));
    let cleared = app.json(Method::PATCH, &href, json!({"where": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert_eq!(cleared.body["where"], Value::Null);
}

#[tokio::test]
async fn bad_geo_points_are_field_errors_and_write_nothing() {
    let app = TestApp::spawn().await;
    places(&app).await;
    for (bad, code) in [
        (json!({"lat": 90.5, "lon": 0}), "out_of_range"),
        (json!({"lat": 0, "lon": -180.5}), "out_of_range"),
        (json!({"lat": "52", "lon": 13}), "invalid_type"),
        (json!({"lat": 52}), "invalid_type"),
        (json!({"lat": 52, "lon": 13, "alt": 30}), "invalid_type"),
        (json!([52, 13]), "invalid_type"),
        (json!("52,13"), "invalid_type"),
    ] {
        let r = app
            .json(
                Method::POST,
                "/v1/collections/places/records",
                json!({"name": "x", "where": bad}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert_eq!(r.field_error("where"), Some(code), "{bad}: {}", r.text);
    }
    let list = app.get("/v1/collections/places/records").await;
    assert_eq!(list.body["items"], json!([]), "nothing was written");
}

#[tokio::test]
async fn filters_reach_into_geo_points_and_sorting_by_one_is_refused() {
    let app = TestApp::spawn().await;
    places(&app).await;
    for (name, lat, lon) in [
        ("Berlin", 52.52, 13.405),
        ("Sydney", -33.87, 151.21),
        ("Quito", -0.18, -78.47),
    ] {
        app.create(
            "places",
            json!({"name": name, "where": {"lat": lat, "lon": lon}}),
        )
        .await;
    }
    let north = app
        .get("/v1/collections/places/records?filter=where.lat%20%3E%200&sort=name")
        .await;
    assert_eq!(north.status, StatusCode::OK, "{}", north.text);
    assert_eq!(names(&north.body), vec!["Berlin"]);
    let box_ = app
        .get("/v1/collections/places/records?filter=where.lat%20%3C%200%20%26%26%20where.lon%20%3E%20100&sort=name")
        .await;
    assert_eq!(box_.status, StatusCode::OK, "{}", box_.text);
    assert_eq!(names(&box_.body), vec!["Sydney"]);

    let sorted = app.get("/v1/collections/places/records?sort=where").await;
    assert_eq!(sorted.status, StatusCode::BAD_REQUEST, "{}", sorted.text);
}

#[tokio::test]
async fn geo_point_specs_take_only_their_options() {
    let app = TestApp::spawn().await;
    for (field, option, code) in [
        (
            json!({"name": "p", "type": "geoPoint", "unique": true}),
            "unique",
            "not_allowed",
        ),
        (
            json!({"name": "p", "type": "geoPoint", "min": 1}),
            "min",
            "not_allowed",
        ),
        (
            json!({"name": "p", "type": "geoPoint", "pattern": "x"}),
            "pattern",
            "not_allowed",
        ),
        (
            json!({"name": "p", "type": "geoPoint", "default": {"lat": 99, "lon": 0}}),
            "default",
            "out_of_range",
        ),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections",
                Some(json!({"name": "spots", "fields": [field]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text);
        assert_eq!(
            r.field_error(&format!("fields[0].{option}")),
            Some(code),
            "{field}: {}",
            r.text
        );
    }
    app.collection(json!({
        "name": "spots",
        "fields": [{"name": "p", "type": "geoPoint", "default": {"lat": 1, "lon": 2}}],
    }))
    .await;
    let r = app.create("spots", json!({})).await;
    assert_eq!(r["p"], json!({"lat": 1.0, "lon": 2.0}));
}

#[tokio::test]
async fn geo_points_are_described_to_clients() {
    let app = TestApp::spawn().await;
    places(&app).await;
    let ts = app.get("/v1/types.ts").await;
    assert_eq!(ts.status, StatusCode::OK);
    assert!(
        ts.text
            .contains("where: { lat: number; lon: number } | null;"),
        "{}",
        ts.text
    );
    let doc = app.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let text = doc.text;
    assert!(
        text.contains("\"geoPoint\""),
        "the spec schema offers the kind"
    );
    let record = &doc.body["components"]["schemas"]["PlacesRecord"]["properties"]["where"];
    assert_eq!(
        record["anyOf"][0]["required"],
        json!(["lat", "lon"]),
        "{record}"
    );
}

async fn cities(app: &TestApp) {
    places(app).await;
    for (name, lat, lon) in [
        ("Berlin", 52.52, 13.405),
        ("Potsdam", 52.3906, 13.0645),
        ("Paris", 48.8566, 2.3522),
        ("Sydney", -33.87, 151.21),
    ] {
        app.create(
            "places",
            json!({"name": name, "where": {"lat": lat, "lon": lon}}),
        )
        .await;
    }
    app.create("places", json!({"name": "Nowhere"})).await;
}

fn q(filter: &str) -> String {
    let mut s = String::new();
    for b in filter.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/v1/collections/places/records?sort=name&filter={s}")
}

#[tokio::test]
async fn geo_distance_filters_by_kilometres_in_both_forms() {
    let app = TestApp::spawn().await;
    cities(&app).await;
    // Berlin-Potsdam is about 27 km, Berlin-Paris about 878 km.
    for (filter, expected) in [
        (
            "geoDistance(where, 52.52, 13.405) < 50",
            vec!["Berlin", "Potsdam"],
        ),
        (
            "geoDistance(where, 52.52, 13.405) < 1000",
            vec!["Berlin", "Paris", "Potsdam"],
        ),
        ("geoDistance(where, 52.52, 13.405) > 10000", vec!["Sydney"]),
        (
            "50 > geoDistance(where, 52.52, 13.405)",
            vec!["Berlin", "Potsdam"],
        ),
        // PocketBase's form: longitude first, any numeric members.
        (
            "geoDistance(where.lon, where.lat, 2.3522, 48.8566) <= 1",
            vec!["Paris"],
        ),
        (
            "geoDistance(where, 52.52, 13.405) < 50 && name != \"Berlin\"",
            vec!["Potsdam"],
        ),
        // Berlin's antipode: half the circumference, where rounding takes the
        // haversine term past 1 (a number, not a database error).
        (
            "geoDistance(where, -52.52, -166.595) > 20000",
            vec!["Berlin"],
        ),
    ] {
        let r = app.get(&q(filter)).await;
        assert_eq!(r.status, StatusCode::OK, "{filter}: {}", r.text);
        assert_eq!(names(&r.body), expected, "{filter}");
    }
}

#[tokio::test]
async fn bad_geo_distance_calls_are_filter_errors_with_positions() {
    let app = TestApp::spawn().await;
    cities(&app).await;
    for (filter, code) in [
        ("distance(where, 1, 2) < 5", "unknown_function"),
        ("geoDistance(where, 1) < 5", "invalid_arguments"),
        ("geoDistance(name, 1, 2) < 5", "type_mismatch"),
        ("geoDistance(where, \"north\", 2) < 5", "type_mismatch"),
        ("geoDistance(where, 1, 2) < \"far\"", "type_mismatch"),
        ("geoDistance(where, 1, 2) ~ 5", "type_mismatch"),
        ("geoDistance(where, 1, 2) < name", "type_mismatch"),
        ("geoDistance(where, 1, 2) = null", "type_mismatch"),
        ("geoDistance(where, 135, 180) < 1", "invalid_arguments"),
        (
            "geoDistance(where.lon, where.lat, 181, 0) < 1",
            "invalid_arguments",
        ),
    ] {
        let r = app.get(&q(filter)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{filter}: {}", r.text);
        assert_eq!(r.field_error("filter"), Some(code), "{filter}: {}", r.text);
    }
}

#[tokio::test]
async fn rules_can_use_geo_distance_for_lists_and_single_reads() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "places",
        "fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "where", "type": "geoPoint"},
        ],
        "rules": {
            "list": "geoDistance(where, 52.52, 13.405) < 100",
            "view": "geoDistance(where, 52.52, 13.405) < 100",
            "create": "",
        },
    }))
    .await;
    let near = app
        .create(
            "places",
            json!({"name": "Potsdam", "where": {"lat": 52.3906, "lon": 13.0645}}),
        )
        .await;
    let far = app
        .create(
            "places",
            json!({"name": "Paris", "where": {"lat": 48.8566, "lon": 2.3522}}),
        )
        .await;
    let list = app.get("/v1/collections/places/records").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(names(&list.body), vec!["Potsdam"]);
    let href = |r: &Value| {
        format!(
            "/v1/collections/places/records/{}",
            r["id"].as_str().unwrap()
        )
    };
    assert_eq!(app.get(&href(&near)).await.status, StatusCode::OK);
    assert_eq!(app.get(&href(&far)).await.status, StatusCode::NOT_FOUND);

    // A distance that cannot be known (an anonymous caller has no @request.auth.lat)
    // satisfies no comparison, `!=` included, in lists and single reads alike.
    app.collection(json!({
        "name": "nearby",
        "fields": [{"name": "where", "type": "geoPoint"}],
        "rules": {
            "list": "geoDistance(where, @request.auth.lat, @request.auth.lon) != 0",
            "view": "geoDistance(where, @request.auth.lat, @request.auth.lon) != 0",
            "create": "",
        },
    }))
    .await;
    let spot = app
        .create("nearby", json!({"where": {"lat": 45, "lon": 0}}))
        .await;
    let list = app.get("/v1/collections/nearby/records").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["items"], json!([]), "{}", list.text);
    let one = app
        .get(&format!(
            "/v1/collections/nearby/records/{}",
            spot["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(one.status, StatusCode::NOT_FOUND, "{}", one.text);

    // A rule naming an unknown function, or comparing a distance with a field or
    // null, is refused when the collection is defined.
    for (rule, code) in [
        ("geoDistance(p, 1, 2) < p.lat", "type_mismatch"),
        ("geoDistance(p, 1, 2) = null", "type_mismatch"),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections",
                Some(json!({
                    "name": "spots",
                    "fields": [{"name": "p", "type": "geoPoint"}],
                    "rules": {"list": rule},
                })),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{rule}: {}", r.text);
        assert_eq!(
            r.field_error("rules.list"),
            Some(code),
            "{rule}: {}",
            r.text
        );
    }
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({
                "name": "spots",
                "fields": [{"name": "p", "type": "geoPoint"}],
                "rules": {"list": "near(p) = true"},
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("rules.list"), Some("unknown_function"));
}
