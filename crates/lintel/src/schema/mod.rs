//! What a collection is: its spec as clients send it, validation of that spec, and the
//! compiled form (regexes, JSON Schema validator, field lookup) the records code uses.
//!
//! This module owns the rules for names and field options; it does no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::validation::{FieldErrors, push_field_error};

pub mod kinds;
pub mod search;
pub use kinds::FieldType;

/// System fields every record has; clients cannot set them.
pub const SYSTEM_FIELDS: [&str; 4] = ["id", "created", "updated", "version"];

/// Names a field may not take (system fields and response members).
pub(crate) const RESERVED_FIELDS: [&str; 8] = [
    "id",
    "created",
    "updated",
    "version",
    "expand",
    "_links",
    "data",
    "collection",
];

/// Names a collection may not take (they collide with routes or internal tables).
pub(crate) const RESERVED_COLLECTIONS: [&str; 9] = [
    "collections",
    "batch",
    "health",
    "ready",
    "metrics",
    "openapi",
    "records",
    "migrations",
    "auth",
];

/// Names of admin areas that API-key scopes name (`audit:read`) or routes use
/// (`/v1/types.ts`): a new collection may not take them, so a scope never means two
/// things. Existing collections of these names keep working (checked on create only).
pub(crate) const ADMIN_AREA_NAMES: [&str; 2] = ["audit", "types"];

pub(crate) const MAX_NAME_LEN: usize = 48;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CollectionKind {
    /// A real SQL table, one column per field.
    #[default]
    Table,
    /// Any JSON object per record, optionally checked against a JSON Schema.
    Document,
    /// A table of accounts that can sign in: the built-in fields `email`, `verified`
    /// and the hidden `passwordHash`, plus any fields the developer adds.
    Auth,
}

/// One field of a table collection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    /// Minimum length (text), value (number, integer) or item count (multiple relation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Maximum length (text), value (number, integer), item count, or bytes (json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// A regular expression the whole value must match (text, email, url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The value used when a record is created without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub default: Option<Value>,
    /// The allowed values of a select.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// The target collection of a relation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// A relation to many records (stored as a JSON array of ids).
    #[serde(default, skip_serializing_if = "is_false")]
    pub multiple: bool,
    /// Never returned, and not usable in filters, sorts or rules.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hidden: bool,
    /// Only superusers set or change it; other callers' values are refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub protected: bool,
    /// Relations: what deleting the target record does to records that name it
    /// (default: `setNull` for optional fields, `restrict` for required ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
    /// Files: how many the field holds (default 1: the value is one name; above 1, a
    /// list of names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u32>,
    /// Files: the most bytes of one file (and never above `files.max_upload_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Files: the media types accepted, as detected from the content (`image/png`, or
    /// `image/*` for the family's inert types); none listed accepts any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_types: Option<Vec<String>>,
    /// Files: never served to an unidentified caller, even when the view rule is
    /// public (PocketBase's "protected").
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    /// Files: the thumbnail sizes that may be asked for (`100x100`, `0x300`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbs: Option<Vec<String>>,
    /// Text: indexed for full-text search (`?search=`, `/v1/search`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub searchable: bool,
    /// Searchable fields: the weight class, `A` (highest) to `D` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Searchable fields: the language for stemming and stop words (default: the
    /// collection's `searchLanguage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// The relation fields of a catalog by target collection: (referring collection,
/// field), for deletes that follow `onDelete`.
pub type RelationGraph = HashMap<String, Vec<(Arc<Collection>, FieldSpec)>>;

/// What deleting a record does to the records whose relation field names it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnDelete {
    /// The delete is refused (`409 record_referenced`) while any record names it.
    Restrict,
    /// The reference is removed: a single relation becomes null, a multiple one loses
    /// the id.
    SetNull,
    /// The records that name it are deleted too (and their own referrers handled by
    /// their policies), in the same transaction.
    Cascade,
}

impl FieldSpec {
    /// A field of this name and kind with every option unset.
    pub fn new(name: &str, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            field_type,
            required: false,
            unique: false,
            min: None,
            max: None,
            pattern: None,
            default: None,
            values: None,
            collection: None,
            multiple: false,
            hidden: false,
            protected: false,
            on_delete: None,
            max_count: None,
            max_size: None,
            mime_types: None,
            private: false,
            thumbs: None,
            searchable: false,
            weight: None,
            language: None,
        }
    }

    /// The delete policy in force for this relation field.
    pub fn delete_policy(&self) -> OnDelete {
        self.on_delete.unwrap_or(if self.required {
            OnDelete::Restrict
        } else {
            OnDelete::SetNull
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An index over one or more fields (for document collections: JSON paths).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IndexSpec {
    /// Generated from the collection and fields when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
}

/// A collection as clients create it and as it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectionSpec {
    pub name: String,
    #[serde(default)]
    pub kind: CollectionKind,
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
    /// A JSON Schema every record of a document collection must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub schema: Option<Value>,
    /// Who may do what, as filter expressions; a missing rule means superusers only,
    /// an empty one means anyone.
    #[serde(default, skip_serializing_if = "Rules::is_unset")]
    pub rules: Rules,
    /// The language of searchable fields that name none (default `english`; `simple`
    /// for no stemming and no stop words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_language: Option<String>,
}

/// The access rules of a collection (see docs/auth.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

impl Rules {
    pub fn is_unset(&self) -> bool {
        self == &Rules::default()
    }

    pub fn all(&self) -> [(&'static str, &Option<String>); 5] {
        [
            ("list", &self.list),
            ("view", &self.view),
            ("create", &self.create),
            ("update", &self.update),
            ("delete", &self.delete),
        ]
    }
}

/// The built-in fields of an auth collection, in order.
pub fn auth_fields() -> Vec<FieldSpec> {
    let base = FieldSpec::new;
    vec![
        FieldSpec {
            required: true,
            unique: true,
            ..base("email", FieldType::Email)
        },
        FieldSpec {
            default: Some(Value::Bool(false)),
            protected: true,
            ..base("verified", FieldType::Bool)
        },
        FieldSpec {
            hidden: true,
            protected: true,
            ..base("passwordHash", FieldType::Text)
        },
    ]
}

/// Names of the built-in auth fields.
pub const AUTH_FIELD_NAMES: [&str; 3] = ["email", "verified", "passwordHash"];

/// A compiled collection: the spec plus what validation needs at run time.
#[derive(Debug)]
pub struct Collection {
    pub spec: CollectionSpec,
    pub created: String,
    pub updated: String,
    field_index: HashMap<String, usize>,
    patterns: Vec<Option<Regex>>,
    validator: Option<jsonschema::Validator>,
    rules: [Rule; 5],
    search: Option<search::SearchConfig>,
}

/// What a collection operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List = 0,
    View = 1,
    Create = 2,
    Update = 3,
    Delete = 4,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::View => "view",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// A compiled access rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// No rule: superusers only.
    Superusers,
    /// An empty rule: anyone.
    Anyone,
    /// Callers for whom (and records for which) the expression holds.
    Expr(lintel_filter::Expr),
}

impl Collection {
    /// Compiles a spec that [`validate_spec`] accepted.
    pub fn compile(spec: CollectionSpec, created: String, updated: String) -> Result<Self, String> {
        let mut field_index = HashMap::new();
        let mut patterns = Vec::with_capacity(spec.fields.len());
        for (i, f) in spec.fields.iter().enumerate() {
            field_index.insert(f.name.clone(), i);
            patterns.push(match &f.pattern {
                Some(p) => Some(compile_pattern(p)?),
                None => None,
            });
        }
        let validator = match &spec.schema {
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| e.to_string())?),
            None => None,
        };
        let compile_rule = |r: &Option<String>| -> Result<Rule, String> {
            Ok(match r.as_deref() {
                None => Rule::Superusers,
                Some(t) if t.trim().is_empty() => Rule::Anyone,
                Some(t) => Rule::Expr(lintel_filter::parse(t).map_err(|e| e.message)?),
            })
        };
        let r = &spec.rules;
        let rules = [
            compile_rule(&r.list)?,
            compile_rule(&r.view)?,
            compile_rule(&r.create)?,
            compile_rule(&r.update)?,
            compile_rule(&r.delete)?,
        ];
        let search = search::SearchConfig::of(&spec);
        Ok(Self {
            spec,
            created,
            updated,
            field_index,
            patterns,
            validator,
            rules,
            search,
        })
    }

    /// The searchable fields, when there are any.
    pub fn search(&self) -> Option<&search::SearchConfig> {
        self.search.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn kind(&self) -> CollectionKind {
        self.spec.kind
    }

    pub fn is_document(&self) -> bool {
        self.spec.kind == CollectionKind::Document
    }

    /// The rule for an action.
    pub fn rule(&self, action: Action) -> &Rule {
        &self.rules[action as usize]
    }

    pub fn is_auth(&self) -> bool {
        self.spec.kind == CollectionKind::Auth
    }

    /// Whether a field is hidden from clients.
    pub fn is_hidden(&self, name: &str) -> bool {
        self.field(name).is_some_and(|f| f.hidden)
    }

    /// Whether any field is hidden (so rendering must filter).
    pub fn has_hidden(&self) -> bool {
        self.spec.fields.iter().any(|f| f.hidden)
    }

    pub fn fields(&self) -> &[FieldSpec] {
        &self.spec.fields
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.field_index.get(name).map(|&i| &self.spec.fields[i])
    }

    pub fn pattern(&self, name: &str) -> Option<&Regex> {
        self.field_index
            .get(name)
            .and_then(|&i| self.patterns.get(i))
            .and_then(|p| p.as_ref())
    }

    pub fn json_schema(&self) -> Option<&jsonschema::Validator> {
        self.validator.as_ref()
    }
}

fn compile_pattern(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{p})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// The set of collections currently defined, shared read-only by requests.
#[derive(Debug, Default)]
pub struct Catalog {
    pub collections: HashMap<String, Arc<Collection>>,
    /// The relation graph, built on first use (the catalog never changes after it is
    /// installed; a schema change installs a new one).
    graph: std::sync::OnceLock<Arc<RelationGraph>>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<Arc<Collection>> {
        self.collections.get(name).cloned()
    }

    /// Collections that relate to `target`, with the relation fields.
    pub fn referrers(&self, target: &str) -> Vec<(Arc<Collection>, FieldSpec)> {
        let mut out = Vec::new();
        for c in self.collections.values() {
            for f in c.fields() {
                if f.field_type == FieldType::Relation && f.collection.as_deref() == Some(target) {
                    out.push((c.clone(), f.clone()));
                }
            }
        }
        out
    }

    /// Every relation, by target collection: what deletes follow (`onDelete`).
    pub fn relation_graph(&self) -> Arc<RelationGraph> {
        self.graph
            .get_or_init(|| {
                let mut graph = RelationGraph::new();
                for c in self.collections.values() {
                    for f in c.fields() {
                        if f.field_type == FieldType::Relation
                            && let Some(target) = &f.collection
                        {
                            graph
                                .entry(target.clone())
                                .or_default()
                                .push((c.clone(), f.clone()));
                        }
                    }
                }
                Arc::new(graph)
            })
            .clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.collections.keys().cloned().collect()
    }
}

/// A valid identifier: a letter, then letters, digits or underscores, at most 48 long.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An index name: like an identifier, but long enough for generated names.
pub fn is_index_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 120
        && !name.to_ascii_lowercase().starts_with("sqlite_")
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a collection name; the message says why it is refused.
pub fn check_collection_name(name: &str) -> Result<(), String> {
    if !is_identifier(name) {
        return Err(format!(
            "must start with a letter and hold only letters, digits and underscores (at most {MAX_NAME_LEN})"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_COLLECTIONS.contains(&lower.as_str())
        || lower.starts_with("sqlite_")
        || lower.starts_with("pg_")
        || lower.starts_with("lintel")
    {
        return Err(format!("'{name}' is reserved"));
    }
    Ok(())
}

/// Checks a field name.
pub fn check_field_name(name: &str) -> Result<(), String> {
    if !is_identifier(name) {
        return Err(format!(
            "must start with a letter and hold only letters, digits and underscores (at most {MAX_NAME_LEN})"
        ));
    }
    if RESERVED_FIELDS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("'{name}' is reserved"));
    }
    Ok(())
}

/// Fills generated index names and the unique indexes of `unique` fields.
pub fn normalize_spec(spec: &mut CollectionSpec) {
    if spec.kind == CollectionKind::Auth {
        // The built-in fields come first; a client may repeat them only unchanged
        // (validate_spec refuses any other definition).
        let builtins = auth_fields();
        let custom: Vec<FieldSpec> = spec
            .fields
            .drain(..)
            .filter(|f| !builtins.iter().any(|b| b == f))
            .collect();
        spec.fields = builtins.into_iter().chain(custom).collect();
    }
    // A file field holding more than one file stores a list, as a multiple relation.
    for f in &mut spec.fields {
        if f.field_type == FieldType::File {
            f.multiple = f.max_count.unwrap_or(1) > 1;
        }
    }
    for idx in &mut spec.indexes {
        if idx.name.is_none() {
            idx.name = Some(index_name(&spec.name, &idx.fields, idx.unique));
        }
    }
}

/// The generated name of an index.
pub fn index_name(collection: &str, fields: &[String], unique: bool) -> String {
    let cols: Vec<String> = fields.iter().map(|f| f.replace('.', "_")).collect();
    format!(
        "{collection}__{}__{}",
        cols.join("_"),
        if unique { "uniq" } else { "idx" }
    )
}

/// Validates a whole spec against the names of the collections it will live beside.
/// With `altering`, the spec replaces the collection of the same name.
pub fn validate_spec(spec: &CollectionSpec, existing: &[String], altering: bool) -> FieldErrors {
    let mut errors = FieldErrors::new();
    if let Err(msg) = check_collection_name(&spec.name) {
        push_field_error(&mut errors, "name", "invalid_name", msg);
    } else if !altering && ADMIN_AREA_NAMES.contains(&spec.name.to_ascii_lowercase().as_str()) {
        push_field_error(
            &mut errors,
            "name",
            "invalid_name",
            format!("'{}' is reserved (an admin area's name)", spec.name),
        );
    } else if !altering && existing.iter().any(|n| n.eq_ignore_ascii_case(&spec.name)) {
        push_field_error(
            &mut errors,
            "name",
            "already_exists",
            format!("a collection named '{}' already exists", spec.name),
        );
    }

    match spec.kind {
        CollectionKind::Document => {
            if !spec.fields.is_empty() {
                push_field_error(
                    &mut errors,
                    "fields",
                    "not_allowed",
                    "document collections take a JSON Schema in 'schema', not fields",
                );
            }
            if let Some(schema) = &spec.schema {
                if !schema.is_object() && !schema.is_boolean() {
                    push_field_error(
                        &mut errors,
                        "schema",
                        "invalid_schema",
                        "must be a JSON Schema object",
                    );
                } else if let Err(e) = jsonschema::meta::validate(schema) {
                    push_field_error(
                        &mut errors,
                        "schema",
                        "invalid_schema",
                        format!("not a valid JSON Schema: {e}"),
                    );
                } else if let Err(e) = jsonschema::validator_for(schema) {
                    push_field_error(
                        &mut errors,
                        "schema",
                        "invalid_schema",
                        format!("not a usable JSON Schema: {e}"),
                    );
                }
            }
        }
        CollectionKind::Table | CollectionKind::Auth => {
            if spec.kind == CollectionKind::Auth {
                let builtins = auth_fields();
                for b in &builtins {
                    match spec.fields.iter().position(|f| f.name == b.name) {
                        Some(i) if &spec.fields[i] == b => {}
                        Some(i) => push_field_error(
                            &mut errors,
                            format!("fields[{i}]"),
                            "reserved",
                            format!(
                                "'{}' is a built-in field of auth collections and cannot be redefined",
                                b.name
                            ),
                        ),
                        None => push_field_error(
                            &mut errors,
                            "fields",
                            "reserved",
                            format!("auth collections keep their built-in field '{}'", b.name),
                        ),
                    }
                }
            }
            if spec.schema.is_some() {
                push_field_error(
                    &mut errors,
                    "schema",
                    "not_allowed",
                    "only document collections take a JSON Schema",
                );
            }
        }
    }

    if let Some(l) = &spec.search_language
        && search::Language::parse(l).is_none()
    {
        push_field_error(
            &mut errors,
            "searchLanguage",
            "invalid",
            format!("unknown language; one of {}", search::Language::names()),
        );
    }

    let mut seen = HashSet::new();
    for (i, f) in spec.fields.iter().enumerate() {
        validate_field(f, i, spec, existing, &mut seen, &mut errors);
    }

    let mut index_names = HashSet::new();
    for (i, idx) in spec.indexes.iter().enumerate() {
        let key = format!("indexes[{i}]");
        if idx.fields.is_empty() {
            push_field_error(
                &mut errors,
                format!("{key}.fields"),
                "required",
                "an index needs at least one field",
            );
        }
        if idx.fields.len() > 8 {
            push_field_error(
                &mut errors,
                format!("{key}.fields"),
                "too_many",
                "an index covers at most 8 fields",
            );
        }
        for name in &idx.fields {
            let ok = match spec.kind {
                CollectionKind::Table | CollectionKind::Auth => {
                    SYSTEM_FIELDS.contains(&name.as_str())
                        || spec.fields.iter().any(|f| &f.name == name)
                }
                CollectionKind::Document => {
                    SYSTEM_FIELDS.contains(&name.as_str())
                        || (!name.is_empty()
                            && name
                                .split('.')
                                .all(|s| is_identifier(s) || s.parse::<u32>().is_ok()))
                }
            };
            if !ok {
                push_field_error(
                    &mut errors,
                    format!("{key}.fields"),
                    "unknown_field",
                    format!("no field '{name}'"),
                );
            }
        }
        if let Some(name) = &idx.name {
            if !is_index_name(name) {
                push_field_error(
                    &mut errors,
                    format!("{key}.name"),
                    "invalid_name",
                    "letters, digits and underscores, starting with a letter, at most 120",
                );
            }
            if !index_names.insert(name.clone()) {
                push_field_error(
                    &mut errors,
                    format!("{key}.name"),
                    "duplicate",
                    "two indexes have this name",
                );
            }
        }
    }
    errors
}

fn validate_field(
    f: &FieldSpec,
    i: usize,
    spec: &CollectionSpec,
    existing: &[String],
    seen: &mut HashSet<String>,
    errors: &mut FieldErrors,
) {
    let key = format!("fields[{i}]");
    if let Err(msg) = check_field_name(&f.name) {
        push_field_error(errors, format!("{key}.name"), "invalid_name", msg);
    } else if !seen.insert(f.name.to_ascii_lowercase()) {
        push_field_error(
            errors,
            format!("{key}.name"),
            "duplicate",
            format!("field '{}' is defined twice", f.name),
        );
    }
    let t = f.field_type;
    for (opt, code, msg) in kinds::check_options(f) {
        push_field_error(errors, format!("{key}.{opt}"), code, msg);
    }
    if let (Some(min), Some(max)) = (f.min, f.max)
        && min > max
    {
        push_field_error(
            errors,
            format!("{key}.min"),
            "invalid",
            "min is greater than max",
        );
    }
    if let Some(p) = &f.pattern
        && t.takes_pattern()
    {
        if p.len() > 512 {
            push_field_error(
                errors,
                format!("{key}.pattern"),
                "too_long",
                "at most 512 characters",
            );
        } else if let Err(e) = compile_pattern(p) {
            push_field_error(
                errors,
                format!("{key}.pattern"),
                "invalid_pattern",
                format!("not a valid regular expression: {e}"),
            );
        }
    }
    match (t, &f.values) {
        (FieldType::Select, None) => {
            push_field_error(
                errors,
                format!("{key}.values"),
                "required",
                "a select field needs its list of values",
            );
        }
        (FieldType::Select, Some(values)) => {
            let unique: HashSet<&String> = values.iter().collect();
            if values.is_empty()
                || unique.len() != values.len()
                || values.iter().any(|v| v.is_empty() || v.len() > 255)
            {
                push_field_error(
                    errors,
                    format!("{key}.values"),
                    "invalid",
                    "a non-empty list of distinct, non-empty strings",
                );
            }
        }
        (_, Some(_)) => {
            push_field_error(
                errors,
                format!("{key}.values"),
                "not_allowed",
                "only select fields take values",
            );
        }
        _ => {}
    }
    match (t, &f.collection) {
        (FieldType::Relation, None) => {
            push_field_error(
                errors,
                format!("{key}.collection"),
                "required",
                "a relation needs its target collection",
            );
        }
        (FieldType::Relation, Some(target))
            if target != &spec.name && !existing.iter().any(|n| n == target) =>
        {
            push_field_error(
                errors,
                format!("{key}.collection"),
                "unknown_collection",
                format!("no collection '{target}'"),
            );
        }
        (FieldType::Relation, Some(_)) => {}
        (_, Some(_)) => {
            push_field_error(
                errors,
                format!("{key}.collection"),
                "not_allowed",
                "only relation fields take a collection",
            );
        }
        _ => {}
    }
    match (t, f.on_delete) {
        (_, None) => {}
        (FieldType::Relation, Some(OnDelete::SetNull)) if f.required => {
            push_field_error(
                errors,
                format!("{key}.onDelete"),
                "not_allowed",
                "a required relation cannot lose its reference; use restrict or cascade",
            );
        }
        (FieldType::Relation, Some(_)) => {}
        (_, Some(_)) => {
            push_field_error(
                errors,
                format!("{key}.onDelete"),
                "not_allowed",
                "only relation fields take onDelete",
            );
        }
    }
}
