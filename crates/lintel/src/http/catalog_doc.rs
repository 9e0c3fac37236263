//! The schema-dependent part of the OpenAPI document, built from the live catalog:
//!
//! - per collection, the component schemas `<Name>Record` (what the server returns),
//!   `<Name>Create` (what a create or a replace takes) and `<Name>Update` (what a patch
//!   takes), with every bound `records::validate` enforces, and the paths
//!   `/v1/collections/<name>/records[/{id}]` that use them (as PostgREST describes each
//!   table);
//! - the bounds of static request bodies that derive attributes cannot state: enums,
//!   cross-field rules (`anyOf`/`oneOf`), and the ones that name collections (API key
//!   scopes, batch paths, relation targets, the auth collections of sign-in).
//!
//! Everything here is JSON built by hand from data; nothing reads input. Checks that a
//! JSON Schema cannot express are stated in the `description` next to the bound.

use serde_json::{Map, Value, json};

use crate::schema::{
    Catalog, Collection, FieldSpec, FieldType, MAX_NAME_LEN, RESERVED_COLLECTIONS, RESERVED_FIELDS,
    kinds,
};

/// A record id (`records::validate::is_record_id`).
pub const RECORD_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// An email address the server accepts (`records::validate::is_email` is looser: it also
/// takes non-ASCII letters and longer local parts; this pattern is a safe subset).
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}){0,2}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

/// An http(s) URL with a host (`records::validate`, at most 2048 characters).
pub const URL_PATTERN: &str = r"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?([/?#][!-~]*)?$";

/// A mailed or pending-sign-in token (`ids::secret_token`).
pub const TOKEN_PATTERN: &str = "^[a-z0-9]{43}$";

/// Longest password the server takes, in bytes (`auth::password::MAX_LENGTH`).
const PASSWORD_MAX: usize = crate::auth::password::MAX_LENGTH;

/// Extension marking a member only superusers may set (others get `400 protected`).
pub const SUPERUSER_ONLY: &str = "x-lintel-superuser-only";

/// The component name prefix of a collection: its name with the first letter upper-cased
/// (collection names are unique ignoring case, so this is one-to-one).
pub fn type_name(collection: &str) -> String {
    let mut chars = collection.chars();
    match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Builds the whole document for a catalog from the static part.
pub fn build(base: &Value, catalog: &Catalog, password_min: usize) -> Value {
    let mut doc = base.clone();
    let mut colls: Vec<&Collection> = catalog.collections.values().map(|c| &**c).collect();
    colls.sort_by(|a, b| a.name().cmp(b.name()));
    let names: Vec<&str> = colls.iter().map(|c| c.name()).collect();
    let auth_names: Vec<&str> = colls
        .iter()
        .filter(|c| c.is_auth())
        .map(|c| c.name())
        .collect();
    tighten_static(&mut doc, &names, &auth_names, password_min);
    let mut bodies = Vec::new();
    for c in colls {
        bodies.push(add_collection(&mut doc, c, password_min));
    }
    tighten_batch(&mut doc, &bodies);
    doc
}

/// The request-body schemas of one collection: (name, create, replace, update).
type Bodies = (String, String, String, String);

/// `POST /v1/batch`: one `oneOf` branch per collection and method, so the method
/// decides whether the path names a record, and the body is the collection's own.
fn tighten_batch(doc: &mut Value, bodies: &[Bodies]) {
    let mut branches = Vec::new();
    for (coll, create, put, update) in bodies {
        let list_path = format!("^(/v1)?/collections/{coll}/records$");
        let item_path = format!("^(/v1)?/collections/{coll}/records/[A-Za-z0-9_-]{{1,64}}$");
        for (method, path, body) in [
            ("POST", &list_path, Some(create)),
            ("PUT", &item_path, Some(put)),
            ("PATCH", &item_path, Some(update)),
            ("DELETE", &item_path, None),
        ] {
            let mut b = json!({
                "title": format!("{method} {coll}"),
                "required": ["method", "path"],
                "properties": {"method": {"const": method}, "path": {"type": "string", "pattern": path}},
            });
            if let Some(body) = body {
                b["required"] = json!(["method", "path", "body"]);
                b["properties"]["body"] = reference(body);
            } else {
                b["not"] = json!({"required": ["body"]});
            }
            branches.push(b);
        }
    }
    set_schema(
        doc,
        "BatchOperation",
        json!({
            "description": "`POST` on `.../records` with the collection's `<Name>Create` body, `PUT` on \
                            `.../records/{id}` with its `<Name>Create` (auth: `<Name>Replace`), `PATCH` with its \
                            `<Name>Update`, or `DELETE` on `.../records/{id}`. Not expressible here: one operation \
                            per record, and no password change in a batch.",
            "oneOf": branches,
        }),
    );
}

/// The object at `path` inside `v`, made (and any non-object there replaced) as needed.
fn obj<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else {
            unreachable!("made an object above")
        };
        cur = m.entry(*key).or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    match cur {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn schemas(doc: &mut Value) -> &mut Map<String, Value> {
    obj(doc, &["components", "schemas"])
}

/// A property of a component schema, when the component has it.
fn prop<'a>(doc: &'a mut Value, schema: &str, name: &str) -> Option<&'a mut Map<String, Value>> {
    schemas(doc)
        .get_mut(schema)?
        .get_mut("properties")?
        .get_mut(name)?
        .as_object_mut()
}

/// Sets members of a property; a property that is `Option<T>` in Rust is rendered by
/// utoipa as `type: [T, "null"]` or `oneOf: [null, ...]`, so this sets them as given.
fn set_prop(doc: &mut Value, schema: &str, name: &str, members: Value) {
    if let (Some(p), Value::Object(m)) = (prop(doc, schema, name), members) {
        for (k, v) in m {
            p.insert(k, v);
        }
    }
}

fn set_schema(doc: &mut Value, schema: &str, members: Value) {
    if let (Some(Value::Object(s)), Value::Object(m)) = (schemas(doc).get_mut(schema), members) {
        for (k, v) in m {
            s.insert(k, v);
        }
    }
}

/// A regex alternative matching `word` in any letter case (JSON Schema patterns have no
/// case-insensitive flag).
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else if c.is_ascii_alphanumeric() || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn identifier_pattern() -> String {
    format!("^[A-Za-z][A-Za-z0-9_]{{0,{}}}$", MAX_NAME_LEN - 1)
}

/// An alternation of collection names (identifiers: nothing to escape), or a pattern
/// that matches nothing when there are none.
fn alternation(names: &[&str]) -> String {
    if names.is_empty() {
        "[^\\s\\S]".into()
    } else {
        names.join("|")
    }
}

/// The schema of a collection name a client may create: an identifier that is not
/// reserved and not taken (names compare ignoring case).
fn new_collection_name(existing: &[&str]) -> Value {
    let mut taken: Vec<String> = RESERVED_COLLECTIONS.iter().map(|w| any_case(w)).collect();
    taken.extend(existing.iter().map(|w| any_case(w)));
    json!({
        "type": "string",
        "pattern": identifier_pattern(),
        "not": {"anyOf": [
            {"pattern": format!("^(?:{})$", taken.join("|"))},
            {"pattern": format!("^(?:{}|{}|{})", any_case("sqlite_"), any_case("pg_"), any_case("lintel"))},
        ]},
        "description": "Letters, digits and underscores, starting with a letter; not reserved and not the name of an existing collection (compared ignoring case).",
    })
}

fn field_name() -> Value {
    let reserved: Vec<String> = RESERVED_FIELDS.iter().map(|w| any_case(w)).collect();
    json!({
        "type": "string",
        "pattern": identifier_pattern(),
        "not": {"pattern": format!("^(?:{})$", reserved.join("|"))},
        "description": "Letters, digits and underscores, starting with a letter; not a system or reserved name; unique in the collection ignoring case.",
    })
}

/// The schema of one field definition, by type: only the options a type takes, with
/// their bounds (`schema::validate_field`). Options this code does not know
/// (added to `FieldSpec` later) are kept as utoipa renders them, on every type.
fn field_spec(generated: &Value, targets: &[&str]) -> Value {
    let known = [
        "name",
        "type",
        "required",
        "unique",
        "min",
        "max",
        "pattern",
        "default",
        "values",
        "collection",
        "multiple",
        "hidden",
        "protected",
    ];
    let mut extra = Map::new();
    if let Some(props) = generated.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            if !known.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
    }
    let length = json!({"type": "integer", "minimum": 0});
    let min_length = json!({"type": "integer", "minimum": 0, "description": "Not above `max`."});
    let bool_opt = json!({"type": "boolean"});
    let variant = |t: FieldType, opts: Vec<(&str, Value)>, defaultable: bool, uniqueable: bool| {
        let mut props = Map::new();
        props.insert("name".into(), field_name());
        props.insert("type".into(), json!({"const": t.as_str()}));
        props.insert("required".into(), bool_opt.clone());
        props.insert("hidden".into(), bool_opt.clone());
        props.insert("protected".into(), bool_opt.clone());
        if uniqueable {
            props.insert("unique".into(), bool_opt.clone());
        }
        for (k, v) in opts {
            props.insert(k.into(), v);
        }
        for (k, v) in &extra {
            props.insert(k.clone(), v.clone());
        }
        let mut s = json!({
            "type": "object",
            "title": t.as_str(),
            "required": ["name", "type"],
            "properties": Value::Object(props),
            "additionalProperties": false,
        });
        if defaultable && uniqueable {
            // A unique field takes no default.
            s["not"] = json!({"required": ["default", "unique"], "properties": {"unique": {"const": true}}});
        }
        s
    };
    let target = json!({
        "type": "string",
        "enum": targets,
        "description": "The target collection: an existing one, or the collection itself.",
    });
    let mut variants: Vec<Value> = FieldType::ALL
        .into_iter()
        .filter_map(|t| {
            kinds::spec_options(t)
                .map(|opts| variant(t, opts, t.takes_default(), t.can_be_unique(false)))
        })
        .collect();
    variants.extend([
        {
            let mut v = variant(
                FieldType::Relation,
                vec![
                    ("collection", target.clone()),
                    ("multiple", json!({"const": false})),
                ],
                false,
                true,
            );
            v["title"] = json!("relation");
            v["required"] = json!(["name", "type", "collection"]);
            v
        },
        {
            let mut v = variant(
                FieldType::Relation,
                vec![
                    ("collection", target),
                    ("multiple", json!({"const": true})),
                    ("min", min_length.clone()),
                    ("max", length),
                ],
                false,
                false,
            );
            v["title"] = json!("relation (multiple)");
            v["required"] = json!(["name", "type", "collection", "multiple"]);
            v
        },
    ]);
    if let Some(select) = variants.iter_mut().find(|v| v["title"] == "select") {
        select["required"] = json!(["name", "type", "values"]);
    }
    json!({
        "description": "One field of a table or auth collection. Each type takes only its own options. \
                        Not expressible here: `min` not above `max`; a pattern must compile; a default must pass \
                        the field's checks; in an auth collection the built-in fields `email`, `verified` and \
                        `passwordHash` cannot be redefined.",
        "oneOf": variants,
    })
}

/// Bounds of the static request bodies: what the handlers check and the derive
/// attributes cannot say.
fn tighten_static(doc: &mut Value, names: &[&str], auth_names: &[&str], password_min: usize) {
    let collection_pattern = identifier_pattern();
    let mut login_colls: Vec<&str> = auth_names.to_vec();
    login_colls.push(crate::auth::SUPERUSERS);

    // POST /v1/auth/login
    set_prop(
        doc,
        "LoginRequest",
        "mode",
        json!({"type": "string", "enum": ["token", "cookie"]}),
    );
    set_prop(
        doc,
        "LoginRequest",
        "collection",
        json!({"type": "string", "enum": login_colls}),
    );
    set_schema(
        doc,
        "LoginRequest",
        json!({
            "description": "Either `email` and `password` (and `totp` or `recoveryCode` when the account has a second factor), \
                            or the `mfaToken` of a `401 mfa_required` answer with `totp` or `recoveryCode`.",
            "anyOf": [
                {"required": ["email", "password"], "not": {"required": ["mfaToken"]}},
                {"required": ["mfaToken", "totp"]},
                {"required": ["mfaToken", "recoveryCode"]},
            ],
        }),
    );
    set_prop(
        doc,
        "LoginRequest",
        "mfaToken",
        json!({"type": "string", "pattern": TOKEN_PATTERN}),
    );
    // `null` counts as missing, which the handler refuses where a member is needed.
    for p in ["email", "password", "totp", "recoveryCode"] {
        set_prop(doc, "LoginRequest", p, json!({"type": "string"}));
    }

    // POST /v1/auth/api-keys
    if let Some(p) = prop(doc, "NewKey", "scopes") {
        p.insert(
            "items".into(),
            json!({
                "type": "string",
                "pattern": format!(
                    "^(\\*|{}):(list|view|create|update|delete|read|write|\\*)$",
                    alternation(names)
                ),
            }),
        );
        p.insert(
            "description".into(),
            json!("`<collection>:<action>` with an existing collection (or `*`). A superuser's key may also hold `collections:read|write|*` and `audit:read|*`."),
        );
    }

    // The mailed-link flows.
    set_prop(
        doc,
        "EmailRequest",
        "collection",
        json!({"type": "string", "enum": auth_names}),
    );
    for (schema, field) in [
        ("EmailRequest", "email"),
        ("EmailChangeRequest", "newEmail"),
    ] {
        set_prop(doc, schema, field, json!({"pattern": EMAIL_PATTERN}));
    }
    if let Some(p) = prop(doc, "PasswordResetConfirm", "password") {
        p.insert("minLength".into(), json!(password_min));
    }

    set_prop(
        doc,
        "BatchOperation",
        "method",
        json!({"type": "string", "enum": ["POST", "PUT", "PATCH", "DELETE"]}),
    );

    // Collections: POST /v1/collections and PATCH /v1/collections/{name}.
    let generated_field = schemas(doc)
        .get("FieldSpec")
        .cloned()
        .unwrap_or(Value::Null);
    schemas(doc).insert("FieldSpec".into(), field_spec(&generated_field, names));
    set_prop(doc, "CollectionSpec", "name", new_collection_name(names));
    set_prop(
        doc,
        "CollectionSpec",
        "schema",
        json!({"type": ["object", "boolean"], "description": "A JSON Schema (document collections only) every record must satisfy; it must be valid."}),
    );
    set_schema(
        doc,
        "CollectionSpec",
        json!({
            "oneOf": [
                {"title": "table", "properties": {"kind": {"const": "table"}}, "not": {"required": ["schema"]}},
                {"title": "auth", "required": ["kind"], "properties": {"kind": {"const": "auth"}}, "not": {"required": ["schema"]}},
                {"title": "document", "required": ["kind"], "properties": {"kind": {"const": "document"}, "fields": {"maxItems": 0}}},
            ],
        }),
    );
    set_prop(
        doc,
        "IndexSpec",
        "fields",
        json!({"type": "array", "minItems": 1, "maxItems": 8,
               "items": {"type": "string", "minLength": 1},
               "description": "Fields of the collection or system fields (document collections: dotted JSON paths)."}),
    );
    set_prop(
        doc,
        "IndexSpec",
        "name",
        json!({"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]{0,119}$",
               "not": {"pattern": format!("^{}", any_case("sqlite_"))},
               "description": "Unique among the collection's indexes."}),
    );
    set_prop(doc, "RenameField", "to", field_name());
    set_prop(
        doc,
        "RenameField",
        "from",
        json!({"type": "string", "pattern": collection_pattern}),
    );
    set_schema(
        doc,
        "CollectionPatch",
        json!({
            "description": "Changes to a collection: at least one. Not expressible here: dropped and renamed fields \
                            and dropped indexes must exist, added ones must not clash, and only document collections \
                            take a schema.",
            "anyOf": [
                {"required": ["addFields"], "properties": {"addFields": {"minItems": 1}}},
                {"required": ["renameFields"], "properties": {"renameFields": {"minItems": 1}}},
                {"required": ["dropFields"], "properties": {"dropFields": {"minItems": 1}}},
                {"required": ["addIndexes"], "properties": {"addIndexes": {"minItems": 1}}},
                {"required": ["dropIndexes"], "properties": {"dropIndexes": {"minItems": 1}}},
                {"required": ["schema"]},
                {"required": ["rules"]},
                {"required": ["updateFields"], "properties": {"updateFields": {"minItems": 1}}},
                {"required": ["searchLanguage"]},
            ],
        }),
    );
    set_schema(
        doc,
        "Rules",
        json!({"description": "Filter expressions (docs/filters.md) that must parse and name only fields of the collection; \
                               a missing rule means superusers only, an empty one anyone."}),
    );
}

/// The schema of one field's value in requests (`records::validate::check_value`).
/// `required`: the value may not be missing, null or empty.
fn input_value(f: &FieldSpec, required: bool) -> Value {
    let min_len = |extra: usize| -> Option<u64> {
        let min = f.min.map(|m| m.max(0.0) as u64);
        let floor = if required { 1 } else { 0 } + extra;
        match min {
            Some(m) if m as usize >= floor => Some(m),
            _ if floor > 0 => Some(floor as u64),
            _ => None,
        }
    };
    let mut s = kinds::input_schema(
        f,
        min_len(0),
        &kinds::IdPatterns {
            record_id: RECORD_ID_PATTERN,
            email: EMAIL_PATTERN,
            url: URL_PATTERN,
        },
    );
    if let Some(p) = &f.pattern {
        let user = json!({"pattern": format!("^(?:{p})$")});
        match s.get("pattern").cloned() {
            Some(own) => {
                s["allOf"] = json!([{"pattern": own}, user]);
                if let Some(m) = s.as_object_mut() {
                    m.remove("pattern");
                }
            }
            None => s["pattern"] = user["pattern"].clone(),
        }
    }
    if f.field_type == FieldType::Text {
        // No store keeps NUL portably; refused everywhere.
        let d = s["description"].as_str().unwrap_or_default().to_owned();
        s["description"] = json!(format!("{d} Must not contain NUL.").trim().to_owned());
    }
    if !required {
        let mut wrapped = json!({"anyOf": [s, {"type": "null"}]});
        if let Some(d) = &f.default {
            wrapped["default"] = d.clone();
        }
        s = wrapped;
    }
    if f.protected {
        s[SUPERUSER_ONLY] = json!(true);
        let d = s["description"].as_str().unwrap_or_default().to_owned();
        s["description"] = json!(
            format!("Superusers only: other callers get `400 protected`. {d}")
                .trim()
                .to_owned()
        );
    }
    s
}

/// The schema of one field's value in responses.
fn output_value(f: &FieldSpec) -> Value {
    let s = kinds::output_schema(f, RECORD_ID_PATTERN);
    if f.field_type.nullable_in_responses(f.multiple) {
        json!({"anyOf": [s, {"type": "null"}]})
    } else {
        s
    }
}

fn system_properties() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!({"type": "string", "pattern": RECORD_ID_PATTERN, "readOnly": true}),
    );
    m.insert(
        "created".into(),
        json!({"type": "string", "format": "date-time", "readOnly": true}),
    );
    m.insert(
        "updated".into(),
        json!({"type": "string", "format": "date-time", "readOnly": true}),
    );
    m.insert(
        "version".into(),
        json!({"type": "integer", "minimum": 1, "readOnly": true}),
    );
    m
}

/// Members no client may write: system fields and response members.
const READ_ONLY: [&str; 6] = ["id", "created", "updated", "version", "_links", "expand"];

/// `<Name>Record`, `<Name>Create`, `<Name>Update` (and, for auth collections whose
/// replace differs from create, `<Name>Replace`), and the collection's paths.
fn add_collection(doc: &mut Value, coll: &Collection, password_min: usize) -> Bodies {
    let name = coll.name();
    let t = type_name(name);
    let visible: Vec<&FieldSpec> = coll.fields().iter().filter(|f| !f.hidden).collect();

    // The record as returned.
    let mut rprops = system_properties();
    let mut rrequired: Vec<String> = ["id", "created", "updated", "version"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let record = if coll.is_document() {
        rprops.insert("_links".into(), json!({"type": "object"}));
        let sys = json!({"type": "object", "required": rrequired, "properties": rprops});
        match &coll.spec.schema {
            Some(user) => json!({"allOf": [sys, user]}),
            None => sys,
        }
    } else {
        for f in &visible {
            rprops.insert(f.name.clone(), output_value(f));
            rrequired.push(f.name.clone());
        }
        rprops.insert(
            "_links".into(),
            json!({"type": "object", "properties": {"self": {"type": "object", "properties": {"href": {"type": "string"}}}}}),
        );
        rprops.insert(
            "expand".into(),
            json!({"type": "object", "description": "Related records, when `expand` is asked for."}),
        );
        json!({"type": "object", "required": rrequired, "properties": rprops})
    };

    // What create (and replace) and patch take.
    let (create, update, replace) = if coll.is_document() {
        let no_system = json!({
            "type": "object",
            "propertyNames": {"not": {"enum": READ_ONLY}},
            "description": "Any JSON object without NUL characters and without the system members.",
        });
        let create = match &coll.spec.schema {
            Some(user) => json!({"allOf": [no_system, user]}),
            None => no_system.clone(),
        };
        let mut update = no_system;
        update["description"] = json!(
            "A JSON merge patch (RFC 7396); the merged document must satisfy the collection's schema."
        );
        (create, update, None)
    } else {
        let mut cprops = Map::new();
        let mut uprops = Map::new();
        let mut crequired = Vec::new();
        for f in &visible {
            if f.field_type == kinds::FieldType::Yjs {
                continue;
            }
            // A missing field takes its default, so only a required one without a
            // default must be sent.
            let must = f.required && f.default.as_ref().is_none_or(Value::is_null);
            cprops.insert(f.name.clone(), input_value(f, must));
            if must {
                crequired.push(f.name.clone());
            }
            let mut u = input_value(f, f.required);
            if coll.is_auth() && f.name == "email" {
                u[SUPERUSER_ONLY] = json!(true);
                u["description"] = json!(
                    "Superusers only (others: POST /v1/auth/request-email-change); a PUT may repeat the current value."
                );
            }
            uprops.insert(f.name.clone(), u);
        }
        let mut rprops_replace = None;
        if coll.is_auth() {
            let pw = json!({
                "type": "string", "minLength": password_min, "maxLength": PASSWORD_MAX, "writeOnly": true,
                "description": format!("At least {password_min} characters and at most {PASSWORD_MAX} bytes; not a common password and not the email address."),
            });
            cprops.insert("password".into(), pw.clone());
            crequired.push("password".into());
            uprops.insert("password".into(), pw);
            uprops.insert(
                "oldPassword".into(),
                json!({"type": "string", "writeOnly": true,
                       "description": "The current password: needed with `password` unless the caller is a superuser."}),
            );
            // A replace keeps the password unless one is sent.
            let mut rp = uprops.clone();
            for f in &visible {
                if let Some(v) = cprops.get(&f.name) {
                    rp.insert(f.name.clone(), v.clone());
                }
            }
            rprops_replace = Some(rp);
        }
        let object = |props: Map<String, Value>, required: Vec<String>| {
            let mut s =
                json!({"type": "object", "properties": props, "additionalProperties": false});
            if !required.is_empty() {
                s["required"] = json!(required);
            }
            s
        };
        let replace = rprops_replace.map(|rp| {
            let req: Vec<String> = crequired
                .iter()
                .filter(|r| *r != "password")
                .cloned()
                .collect();
            object(rp, req)
        });
        (
            object(cprops, crequired),
            object(uprops, Vec::new()),
            replace,
        )
    };

    let mut names = [
        format!("{t}Record"),
        format!("{t}Create"),
        format!("{t}Update"),
        format!("{t}Replace"),
    ];
    // Never shadow a static component.
    if names.iter().any(|n| schemas(doc).contains_key(n)) {
        for n in &mut names {
            *n = format!("Collection{n}");
        }
    }
    let [record_name, create_name, update_name, replace_name] = names;
    let s = schemas(doc);
    s.insert(record_name.clone(), record);
    s.insert(create_name.clone(), create);
    s.insert(update_name.clone(), update);
    let put_name = match replace {
        Some(r) => {
            s.insert(replace_name.clone(), r);
            replace_name
        }
        None => create_name.clone(),
    };

    add_paths(
        doc,
        name,
        &record_name,
        &create_name,
        &put_name,
        &update_name,
    );
    (name.to_owned(), create_name, put_name, update_name)
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The collection's own paths, copied from the generic record operations (so
/// parameters, headers and error responses stay the same) with the collection fixed
/// and the bodies typed.
fn add_paths(doc: &mut Value, coll: &str, record: &str, create: &str, put: &str, update: &str) {
    let generic_list = doc["paths"]["/v1/collections/{collection}/records"].clone();
    let generic_item = doc["paths"]["/v1/collections/{collection}/records/{id}"].clone();
    let specialise = |op: &Value, verb: &str, body: Option<&str>, ok: Option<(&str, Value)>| {
        let mut op = op.clone();
        if !op.is_object() {
            return Value::Null;
        }
        op["operationId"] = json!(format!("{verb}_{coll}"));
        op["tags"] = json!(["records", coll]);
        if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
            params.retain(|p| p["name"] != "collection");
        }
        if let Some(b) = body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": reference(b)}},
            });
        }
        if let Some((status, schema)) = ok
            && let Some(resp) = op
                .get_mut("responses")
                .and_then(|r| r.get_mut(status))
                .and_then(Value::as_object_mut)
        {
            resp.insert(
                "content".into(),
                json!({"application/json": {"schema": schema}}),
            );
        }
        op
    };
    let page = json!({
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": reference(record)},
            "page": {"type": "integer"}, "perPage": {"type": "integer"},
            "totalItems": {"type": "integer"}, "totalPages": {"type": "integer"},
            "nextCursor": {"type": ["string", "null"]},
            "_links": {"type": "object"},
        },
        "required": ["items"],
    });
    let mut list = Map::new();
    let mut item = Map::new();
    let ops = [
        (false, "get", "list", None, Some(("200", page))),
        (
            false,
            "post",
            "create",
            Some(create),
            Some(("201", reference(record))),
        ),
        (true, "get", "get", None, Some(("200", reference(record)))),
        (
            true,
            "put",
            "replace",
            Some(put),
            Some(("200", reference(record))),
        ),
        (
            true,
            "patch",
            "update",
            Some(update),
            Some(("200", reference(record))),
        ),
        (true, "delete", "delete", None, None),
    ];
    for (is_item, method, verb, body, ok) in ops {
        let (target, generic) = if is_item {
            (&mut item, &generic_item)
        } else {
            (&mut list, &generic_list)
        };
        let op = specialise(&generic[method], verb, body, ok);
        if op.is_object() {
            target.insert(method.into(), op);
        }
    }
    let paths = obj(doc, &["paths"]);
    if !list.is_empty() {
        paths.insert(
            format!("/v1/collections/{coll}/records"),
            Value::Object(list),
        );
    }
    if !item.is_empty() {
        paths.insert(
            format!("/v1/collections/{coll}/records/{{id}}"),
            Value::Object(item),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name("posts"), "Posts");
        assert_eq!(type_name("blog_posts"), "Blog_posts");
        assert_eq!(any_case("pg_"), "[pP][gG]_");
    }

    #[test]
    fn patterns_are_valid_regexes() {
        for p in [RECORD_ID_PATTERN, EMAIL_PATTERN, URL_PATTERN, TOKEN_PATTERN] {
            assert!(regex::Regex::new(p).is_ok(), "{p}");
        }
        let email = regex::Regex::new(EMAIL_PATTERN).ok();
        assert!(
            email
                .as_ref()
                .is_some_and(|r| r.is_match("a.b+c@example.com"))
        );
        assert!(email.as_ref().is_some_and(|r| !r.is_match("a@b")));
    }
}
