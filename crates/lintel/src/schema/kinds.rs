//! Field kinds: everything that differs by a field's type lives here. Each kind says
//! how it is stored (its [`Storage`] class, from which the store derives the column
//! type per dialect, the bound parameter and the decoding), which options it takes, how
//! a value is checked and normalised, what type filters see, and how it is described
//! to clients (JSON Schema, TypeScript). Adding a kind is a new variant here and the
//! arms the compiler then asks for in this file; nothing else matches on `FieldType`
//! for behaviour.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::clock::normalize_datetime;
use crate::schema::FieldSpec;

/// The type of a field of a table or auth collection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FieldType {
    Text,
    Number,
    Integer,
    Bool,
    Email,
    Url,
    Datetime,
    Select,
    Json,
    Relation,
    /// A point on Earth: `{"lat": -90..90, "lon": -180..180}` (WGS 84 degrees).
    GeoPoint,
    /// Uploaded files: one stored name, or a list of them (`maxCount` above 1).
    File,
    /// A collaborative document (Yjs): edited through `/v1/yjs`, shown as its JSON.
    Yjs,
}

/// How a kind's values sit in the store. The store maps each class to a column type
/// per dialect, a bound parameter and a decoder (`store::sql`, the drivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Text, compared bytewise.
    Text,
    /// A double.
    Real,
    /// A 64-bit integer.
    Integer,
    Bool,
    /// A point in time: native on PostgreSQL, canonical RFC 3339 text on SQLite.
    Timestamp,
    /// A JSON value: JSONB on PostgreSQL, JSON text on SQLite.
    Json,
}

/// The type of a column or JSON value as the filter compiler and the rule evaluator
/// see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    Text,
    /// A system timestamp (`created`, `updated`): canonical RFC 3339 text.
    Datetime,
    /// A datetime field: a native timestamp column where the store has one.
    Timestamp,
    Number,
    Bool,
    /// A multiple relation: a JSON array of ids.
    IdList,
    /// A JSON value: compared by its JSON type, contains works on arrays and strings.
    Json,
}

/// The bounds of a geoPoint's members.
const LAT_RANGE: (f64, f64) = (-90.0, 90.0);
const LON_RANGE: (f64, f64) = (-180.0, 180.0);

impl FieldType {
    /// Every kind, in the order the API documents them.
    pub const ALL: [FieldType; 13] = [
        FieldType::Text,
        FieldType::Number,
        FieldType::Integer,
        FieldType::Bool,
        FieldType::Email,
        FieldType::Url,
        FieldType::Datetime,
        FieldType::Select,
        FieldType::Json,
        FieldType::Relation,
        FieldType::GeoPoint,
        FieldType::File,
        FieldType::Yjs,
    ];

    /// The name clients use in a field's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Bool => "bool",
            FieldType::Email => "email",
            FieldType::Url => "url",
            FieldType::Datetime => "datetime",
            FieldType::Select => "select",
            FieldType::Json => "json",
            FieldType::Relation => "relation",
            FieldType::GeoPoint => "geoPoint",
            FieldType::File => "file",
            FieldType::Yjs => "yjs",
        }
    }

    /// How values of this kind are stored (`multiple`: a multiple relation).
    pub fn storage(self, multiple: bool) -> Storage {
        match self {
            FieldType::Number => Storage::Real,
            FieldType::Integer => Storage::Integer,
            FieldType::Bool => Storage::Bool,
            FieldType::Datetime => Storage::Timestamp,
            FieldType::Json | FieldType::GeoPoint | FieldType::Yjs => Storage::Json,
            FieldType::Relation | FieldType::File if multiple => Storage::Json,
            FieldType::Text
            | FieldType::Email
            | FieldType::Url
            | FieldType::Select
            | FieldType::Relation
            | FieldType::File => Storage::Text,
        }
    }

    /// What a filter compares a field of this kind as.
    pub fn filter_kind(self, multiple: bool) -> FilterKind {
        match self {
            FieldType::Number | FieldType::Integer => FilterKind::Number,
            FieldType::Bool => FilterKind::Bool,
            FieldType::Datetime => FilterKind::Timestamp,
            FieldType::Json | FieldType::GeoPoint | FieldType::Yjs => FilterKind::Json,
            FieldType::Relation | FieldType::File if multiple => FilterKind::IdList,
            FieldType::Text
            | FieldType::Email
            | FieldType::Url
            | FieldType::Select
            | FieldType::Relation
            | FieldType::File => FilterKind::Text,
        }
    }

    /// Whether a filter path continues into the value (`meta.tags`, `place.lat`).
    pub fn has_members(self) -> bool {
        matches!(self, FieldType::Json | FieldType::GeoPoint | FieldType::Yjs)
    }

    /// Whether lists sort by it (JSON values have no order).
    pub fn sortable(self, multiple: bool) -> bool {
        self.storage(multiple) != Storage::Json
    }

    /// Whether `min`/`max` apply (lengths, values, item counts or JSON bytes).
    pub fn takes_min_max(self) -> bool {
        matches!(
            self,
            FieldType::Text
                | FieldType::Number
                | FieldType::Integer
                | FieldType::Json
                | FieldType::Relation
        )
    }

    /// Whether `min`/`max` may be negative or fractional (they bound a value, not a
    /// length): negative for integers, fractional only for numbers.
    fn bounds_are_values(self) -> (bool, bool) {
        match self {
            FieldType::Number => (true, true),
            FieldType::Integer => (true, false),
            _ => (false, false),
        }
    }

    /// Whether a `pattern` applies.
    pub fn takes_pattern(self) -> bool {
        matches!(self, FieldType::Text | FieldType::Email | FieldType::Url)
    }

    /// Whether `unique` applies (`multiple`: a multiple relation).
    pub fn can_be_unique(self, multiple: bool) -> bool {
        self.storage(multiple) != Storage::Json
    }

    /// Whether a `default` applies.
    pub fn takes_default(self) -> bool {
        !matches!(self, FieldType::Relation | FieldType::File | FieldType::Yjs)
    }

    /// The label of `min` and `max` in generated docs ("" when `min` does not apply).
    pub fn bound_labels(self) -> (&'static str, &'static str) {
        match self {
            FieldType::Text => ("min length", "max length"),
            FieldType::Relation | FieldType::File => ("min items", "max items"),
            FieldType::Json => ("", "max bytes"),
            _ => ("min", "max"),
        }
    }

    /// Whether a response may hold `null` for it (JSON and multiple relations hold
    /// `null`/`[]` as values instead).
    pub fn nullable_in_responses(self, multiple: bool) -> bool {
        !(matches!(self, FieldType::Json | FieldType::Yjs)
            || (matches!(self, FieldType::Relation | FieldType::File) && multiple))
    }
}

/// A value refused: the error code and the reason.
pub type Check = Result<Value, (&'static str, String)>;

/// Null, or an empty string or list: all count as "no value" (for json fields only
/// null does: `[]` and `""` are values there).
pub fn is_empty(f: &FieldSpec, v: &Value) -> bool {
    if f.field_type == FieldType::Json {
        return v.is_null();
    }
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// What an optional field holds when it has no value.
pub fn empty_value(f: &FieldSpec) -> Value {
    if matches!(f.field_type, FieldType::Relation | FieldType::File) && f.multiple {
        Value::Array(Vec::new())
    } else {
        Value::Null
    }
}

/// Whether a JSON value holds a NUL character anywhere (no store keeps those
/// portably: PostgreSQL refuses them in text and jsonb).
pub fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Checks one non-empty value against its field (`pattern`: the field's compiled
/// pattern); also used for defaults. Returns the value to store, normalised.
pub fn check_value(f: &FieldSpec, pattern: Option<&Regex>, value: &Value) -> Check {
    if contains_nul(value) {
        return Err((
            "invalid_character",
            "must not contain NUL characters".into(),
        ));
    }
    let check_pattern = |s: &str| match pattern {
        Some(re) if !re.is_match(s) => Err((
            "pattern_mismatch",
            "does not match the required pattern".to_owned(),
        )),
        _ => Ok(()),
    };
    match f.field_type {
        FieldType::Text => {
            let s = expect_str(value, "text")?;
            check_len(f, s)?;
            check_pattern(s)?;
            Ok(value.clone())
        }
        FieldType::Email => {
            let s = expect_str(value, "an email address")?;
            if !is_email(s) {
                return Err(("invalid_email", "is not a valid email address".into()));
            }
            check_pattern(s)?;
            Ok(value.clone())
        }
        FieldType::Url => {
            let s = expect_str(value, "a URL")?;
            match url::Url::parse(s) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && s.len() <= 2048 => {}
                _ => return Err(("invalid_url", "is not a valid http(s) URL".into())),
            }
            check_pattern(s)?;
            Ok(value.clone())
        }
        FieldType::Datetime => {
            let s = expect_str(value, "an RFC 3339 date-time")?;
            normalize_datetime(s).map(Value::String).ok_or((
                "invalid_datetime",
                "is not an RFC 3339 date-time (e.g. 2024-05-01T12:00:00Z)".into(),
            ))
        }
        FieldType::Select => {
            let s = expect_str(value, "one of the allowed values")?;
            let values = f.values.as_deref().unwrap_or_default();
            if values.iter().any(|v| v == s) {
                Ok(value.clone())
            } else {
                Err((
                    "invalid_choice",
                    format!("must be one of: {}", values.join(", ")),
                ))
            }
        }
        FieldType::Number => {
            let n = value
                .as_f64()
                .filter(|_| value.is_number())
                .ok_or(("invalid_type", "must be a number".to_owned()))?;
            check_range(f, n)?;
            Ok(value.clone())
        }
        FieldType::Integer => {
            let n = match value {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|x| x.fract() == 0.0 && x.abs() < 9.0e15)
                        .map(|x| x as i64)
                }),
                _ => None,
            }
            .ok_or(("invalid_type", "must be a whole number".to_owned()))?;
            check_range(f, n as f64)?;
            Ok(Value::from(n))
        }
        FieldType::Bool => match value {
            Value::Bool(_) => Ok(value.clone()),
            _ => Err(("invalid_type", "must be true or false".into())),
        },
        FieldType::Json => {
            if let Some(max) = f.max {
                let size = value.to_string().len();
                if size as f64 > max {
                    return Err(("too_large", format!("must be at most {max} bytes of JSON")));
                }
            }
            Ok(value.clone())
        }
        FieldType::Relation => check_relation(f, value),
        FieldType::GeoPoint => check_geo_point(value),
        FieldType::File => check_file_names(f, value),
        FieldType::Yjs => Err((
            "read_only",
            "a yjs field is edited through /v1/yjs/{collection}/{id}/{field}".into(),
        )),
    }
}

/// A file field's value: stored names (the records service has already checked that
/// each is the record's own or just uploaded).
fn check_file_names(f: &FieldSpec, value: &Value) -> Check {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !f.multiple {
        return match value.as_str() {
            Some(s) if ok(s) => Ok(value.clone()),
            _ => Err(("invalid_type", "must be a file name".into())),
        };
    }
    match value.as_array() {
        Some(a) if a.iter().all(|v| v.as_str().is_some_and(ok)) => Ok(value.clone()),
        _ => Err(("invalid_type", "must be a list of file names".into())),
    }
}

fn expect_str<'a>(value: &'a Value, what: &str) -> Result<&'a str, (&'static str, String)> {
    value
        .as_str()
        .ok_or(("invalid_type", format!("must be {what} (a string)")))
}

fn check_len(f: &FieldSpec, s: &str) -> Result<(), (&'static str, String)> {
    let len = s.chars().count() as f64;
    if let Some(min) = f.min
        && len < min
    {
        return Err(("too_short", format!("must be at least {min} characters")));
    }
    if let Some(max) = f.max
        && len > max
    {
        return Err(("too_long", format!("must be at most {max} characters")));
    }
    Ok(())
}

fn check_range(f: &FieldSpec, n: f64) -> Result<(), (&'static str, String)> {
    if let Some(min) = f.min
        && n < min
    {
        return Err(("too_small", format!("must be at least {min}")));
    }
    if let Some(max) = f.max
        && n > max
    {
        return Err(("too_large", format!("must be at most {max}")));
    }
    Ok(())
}

/// A record id as Lintel makes them, or one imported: 1-64 URL-safe characters.
pub fn is_record_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_relation(f: &FieldSpec, value: &Value) -> Check {
    if !f.multiple {
        let s = value
            .as_str()
            .ok_or(("invalid_type", "must be a record id (a string)".to_owned()))?;
        if !is_record_id(s) {
            return Err(("invalid_id", "is not a record id".into()));
        }
        return Ok(value.clone());
    }
    let items = value
        .as_array()
        .ok_or(("invalid_type", "must be a list of record ids".to_owned()))?;
    let mut ids: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(s) if is_record_id(s) => {
                if !ids.iter().any(|v| v.as_str() == Some(s)) {
                    ids.push(item.clone());
                }
            }
            _ => return Err(("invalid_id", "every item must be a record id".into())),
        }
    }
    let n = ids.len() as f64;
    if let Some(min) = f.min
        && n < min
    {
        return Err(("too_few", format!("must list at least {min} records")));
    }
    if let Some(max) = f.max
        && n > max
    {
        return Err(("too_many", format!("must list at most {max} records")));
    }
    Ok(Value::Array(ids))
}

/// `{"lat", "lon"}`, both numbers in range, nothing else; stored as exactly that.
fn check_geo_point(value: &Value) -> Check {
    let shape = || {
        (
            "invalid_type",
            "must be an object {\"lat\": number, \"lon\": number}".to_owned(),
        )
    };
    let obj = value.as_object().ok_or_else(shape)?;
    if obj.len() != 2 {
        return Err(shape());
    }
    let member = |name: &str, (lo, hi): (f64, f64)| -> Result<f64, (&'static str, String)> {
        let n = obj
            .get(name)
            .filter(|v| v.is_number())
            .and_then(Value::as_f64)
            .ok_or_else(shape)?;
        if !(lo..=hi).contains(&n) {
            return Err((
                "out_of_range",
                format!("{name} must be between {lo} and {hi}"),
            ));
        }
        Ok(n)
    };
    let lat = member("lat", LAT_RANGE)?;
    let lon = member("lon", LON_RANGE)?;
    Ok(json!({"lat": lat, "lon": lon}))
}

/// The mean Earth radius the distance uses, in kilometres (as PocketBase's).
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// The great-circle distance in kilometres between two points in degrees
/// (haversine). The stores compute the same with `lintel_geo_distance`.
pub fn geo_distance_km(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    let (p1, p2) = (lat_a.to_radians(), lat_b.to_radians());
    let dp = (lat_b - lat_a).to_radians();
    let dl = (lon_b - lon_a).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    // Rounding can take `h` a hair outside [0, 1] (antipodes, identical points).
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// A pragmatic address check: local@domain, no spaces, a dotted domain of sane labels.
pub fn is_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

/// Checks the options of one field spec that depend on its kind; each problem is
/// `(option, code, reason)`.
pub fn check_options(f: &FieldSpec) -> Vec<(&'static str, &'static str, String)> {
    let t = f.field_type;
    let mut out = Vec::new();
    if (f.min.is_some() || f.max.is_some()) && !t.takes_min_max() {
        out.push((
            "min",
            "not_allowed",
            format!("a {} field takes no min or max", t.as_str()),
        ));
    }
    let (negative, fractional) = t.bounds_are_values();
    for (opt, v) in [("min", f.min), ("max", f.max)] {
        if let Some(v) = v
            && (!v.is_finite() || (v < 0.0 && !negative) || (v.fract() != 0.0 && !fractional))
        {
            out.push((
                opt,
                "invalid",
                "must be a finite number (a whole one for lengths and integers)".to_owned(),
            ));
        }
    }
    if f.pattern.is_some() && !t.takes_pattern() {
        out.push((
            "pattern",
            "not_allowed",
            format!("a {} field takes no pattern", t.as_str()),
        ));
    }
    let file_only: [(&'static str, bool); 5] = [
        ("maxCount", f.max_count.is_some()),
        ("maxSize", f.max_size.is_some()),
        ("mimeTypes", f.mime_types.is_some()),
        ("private", f.private),
        ("thumbs", f.thumbs.is_some()),
    ];
    if t == FieldType::File {
        check_file_options(f, &mut out);
    } else {
        for (opt, set) in file_only {
            if set {
                out.push((opt, "not_allowed", format!("only file fields take {opt}")));
            }
        }
    }
    check_search_options(f, &mut out);
    if t == FieldType::Yjs && f.required {
        out.push((
            "required",
            "not_allowed",
            "a yjs field always has a value (an empty document at first)".to_owned(),
        ));
    }
    if f.multiple && !matches!(t, FieldType::Relation | FieldType::File) {
        out.push((
            "multiple",
            "not_allowed",
            "only relation fields can be multiple".to_owned(),
        ));
    }
    if f.unique && !t.can_be_unique(f.multiple) {
        out.push((
            "unique",
            "not_allowed",
            "json, geoPoint and multiple relation fields cannot be unique".to_owned(),
        ));
    }
    if f.default.is_some() && (f.unique || !t.takes_default()) {
        out.push((
            "default",
            "not_allowed",
            "unique and relation fields take no default".to_owned(),
        ));
    }
    out
}

/// The full-text search options: only text fields are searchable (never hidden ones,
/// whose words a search would reveal); a weight A–D and a known language.
fn check_search_options(f: &FieldSpec, out: &mut Vec<(&'static str, &'static str, String)>) {
    use crate::schema::search::{Language, can_search, weight_class};
    if f.searchable && !can_search(f) {
        out.push((
            "searchable",
            "not_allowed",
            format!(
                "only text fields can be searchable, not {}",
                f.field_type.as_str()
            ),
        ));
    }
    if f.searchable && f.hidden {
        out.push((
            "searchable",
            "not_allowed",
            "a hidden field cannot be searchable (a search would reveal its words)".to_owned(),
        ));
    }
    for (opt, set) in [
        ("weight", f.weight.is_some()),
        ("language", f.language.is_some()),
    ] {
        if set && !f.searchable {
            out.push((
                opt,
                "not_allowed",
                format!("only searchable fields take {opt}"),
            ));
        }
    }
    if let Some(w) = &f.weight
        && weight_class(w).is_none()
    {
        out.push(("weight", "invalid", "must be A, B, C or D".to_owned()));
    }
    if let Some(l) = &f.language
        && Language::parse(l).is_none()
    {
        out.push((
            "language",
            "invalid",
            format!("unknown language; one of {}", Language::names()),
        ));
    }
}

/// The options of a file field.
fn check_file_options(f: &FieldSpec, out: &mut Vec<(&'static str, &'static str, String)>) {
    if f.max_count.is_some_and(|n| n == 0 || n > 1000) {
        out.push(("maxCount", "invalid", "must be 1 to 1000".into()));
    }
    if f.max_size == Some(0) {
        out.push(("maxSize", "invalid", "must be at least 1 byte".into()));
    }
    if let Some(types) = &f.mime_types {
        let shape = |m: &str| {
            let mut it = m.split('/');
            let (a, b) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            let token = |x: &str| {
                !x.is_empty()
                    && x.len() <= 100
                    && x.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
            };
            it.next().is_none() && token(a) && (b == "*" || token(b))
        };
        if types.is_empty() || types.len() > 100 || !types.iter().all(|m| shape(m)) {
            out.push((
                "mimeTypes",
                "invalid",
                "1 to 100 media types such as image/png or image/*".into(),
            ));
        }
    }
    if let Some(thumbs) = &f.thumbs
        && (thumbs.len() > 20 || !thumbs.iter().all(|t| thumb_size(t).is_some()))
    {
        out.push((
            "thumbs",
            "invalid",
            "at most 20 sizes WxH (0 for one side keeps the ratio), each side at most 4000".into(),
        ));
    }
    for (opt, set) in [
        ("hidden", f.hidden),
        ("unique", f.unique),
        ("min", f.min.is_some() || f.max.is_some()),
        ("pattern", f.pattern.is_some()),
        ("default", f.default.is_some()),
    ] {
        if set {
            out.push((opt, "not_allowed", format!("a file field takes no {opt}")));
        }
    }
}

/// A thumb size `WxH`: both sides at most 4000, not both 0.
pub fn thumb_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let side = |x: &str| {
        (!x.is_empty() && x.len() <= 4 && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n <= 4000)
    };
    let (w, h) = (side(w)?, side(h)?);
    (w > 0 || h > 0).then_some((w, h))
}

/// The JSON Schema of one field's value in requests, before the field's common
/// options (pattern, required, protected) are applied (`min_len`: the least length or
/// item count a required value must have).
pub fn input_schema(f: &FieldSpec, min_len: Option<u64>, ids: &IdPatterns) -> Value {
    match f.field_type {
        FieldType::Text => {
            let mut s = json!({"type": "string"});
            if let Some(m) = min_len {
                s["minLength"] = json!(m);
            }
            if let Some(m) = f.max {
                s["maxLength"] = json!(m.max(0.0) as u64);
            }
            s
        }
        FieldType::Email => {
            json!({"type": "string", "format": "email", "maxLength": 254, "pattern": ids.email})
        }
        FieldType::Url => {
            json!({"type": "string", "format": "uri", "maxLength": 2048, "pattern": ids.url})
        }
        FieldType::Datetime => json!({
            "type": "string", "format": "date-time",
            "description": "RFC 3339, years 0000 to 9999; stored in UTC.",
        }),
        FieldType::Select => {
            json!({"type": "string", "enum": f.values.clone().unwrap_or_default()})
        }
        FieldType::Number => {
            let mut s = json!({"type": "number"});
            if let Some(m) = f.min {
                s["minimum"] = json!(m);
            }
            if let Some(m) = f.max {
                s["maximum"] = json!(m);
            }
            s
        }
        FieldType::Integer => {
            let mut s = json!({"type": "integer", "minimum": -9.0e15, "maximum": 9.0e15});
            if let Some(m) = f.min {
                s["minimum"] = json!(m.max(-9.0e15));
            }
            if let Some(m) = f.max {
                s["maximum"] = json!(m.min(9.0e15));
            }
            s
        }
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Json => match f.max {
            Some(m) => {
                json!({"description": format!("Any JSON value, at most {m} bytes as JSON text; strings must not hold NUL.")})
            }
            None => json!({"description": "Any JSON value; strings must not hold NUL."}),
        },
        FieldType::Relation => {
            let target = f.collection.as_deref().unwrap_or_default();
            let id = json!({"type": "string", "pattern": ids.record_id});
            if f.multiple {
                let mut s = json!({
                    "type": "array", "items": id,
                    "description": format!("Ids of `{target}` records the caller may view (duplicates are dropped before counting)."),
                });
                if let Some(m) = min_len {
                    s["minItems"] = json!(m);
                }
                if let Some(m) = f.max {
                    s["maxItems"] = json!(m.max(0.0) as u64);
                }
                s
            } else {
                let mut s = id;
                s["description"] = json!(format!(
                    "The id of a `{target}` record the caller may view."
                ));
                s
            }
        }
        FieldType::GeoPoint => geo_point_schema(),
        FieldType::File => file_schema(f),
        FieldType::Yjs => {
            json!({"not": {}, "description": "Read-only in record writes: edit through /v1/yjs."})
        }
    }
}

/// A file field's value: stored names (files themselves come as multipart parts).
fn file_schema(f: &FieldSpec) -> Value {
    let name = json!({"type": "string", "maxLength": 128});
    if f.multiple {
        json!({"type": "array", "items": name, "maxItems": f.max_count.unwrap_or(1),
               "description": "Stored names of this record's files; upload files as multipart/form-data parts named after the field (`field+` adds, `field-` removes)."})
    } else {
        let mut s = name;
        s["description"] = json!(
            "The stored name of this record's file; upload the file as a multipart/form-data part named after the field."
        );
        s
    }
}

fn geo_point_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "lat": {"type": "number", "minimum": LAT_RANGE.0, "maximum": LAT_RANGE.1},
            "lon": {"type": "number", "minimum": LON_RANGE.0, "maximum": LON_RANGE.1},
        },
        "required": ["lat", "lon"],
        "additionalProperties": false,
        "description": "WGS 84 degrees.",
    })
}

/// Patterns the API documents for ids and addresses (`http::catalog_doc` owns them).
pub struct IdPatterns {
    pub record_id: &'static str,
    pub email: &'static str,
    pub url: &'static str,
}

/// The JSON Schema of one field's value in responses (without `null`).
pub fn output_schema(f: &FieldSpec, record_id: &str) -> Value {
    match f.field_type {
        FieldType::Text => json!({"type": "string"}),
        FieldType::Email => json!({"type": "string", "format": "email"}),
        FieldType::Url => json!({"type": "string", "format": "uri"}),
        FieldType::Datetime => json!({"type": "string", "format": "date-time"}),
        FieldType::Select => {
            json!({"type": "string", "enum": f.values.clone().unwrap_or_default()})
        }
        FieldType::Number => json!({"type": "number"}),
        FieldType::Integer => json!({"type": "integer"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Json => json!({}),
        FieldType::Yjs => {
            json!({"type": "object", "description": "The collaborative document's JSON: each root by name (a Y.Text as a string, a Y.Map as an object, a Y.Array as an array). Read-only here: edit through /v1/yjs."})
        }
        FieldType::Relation if f.multiple => {
            json!({"type": "array", "items": {"type": "string", "pattern": record_id}})
        }
        FieldType::Relation => json!({"type": "string", "pattern": record_id}),
        FieldType::GeoPoint => geo_point_schema(),
        FieldType::File if f.multiple => json!({"type": "array", "items": {"type": "string"}}),
        FieldType::File => json!({"type": "string"}),
    }
}

/// The options of a kind in the collection spec's schema (beyond name, type,
/// required, hidden, protected and unique), by option name; `None` for relations,
/// whose two variants (single, multiple) the caller builds.
pub fn spec_options(t: FieldType) -> Option<Vec<(&'static str, Value)>> {
    let min = |ty: &str| json!({"type": ty, "description": "Not above `max`."});
    let default_of = |mut v: Value| {
        v["description"] = json!(
            "The value of records created without this field; it must pass the field's own checks."
        );
        ("default", v)
    };
    let length = json!({"type": "integer", "minimum": 0});
    let min_length = json!({"type": "integer", "minimum": 0, "description": "Not above `max`."});
    let pattern = || {
        (
            "pattern",
            json!({"type": "string", "minLength": 1, "maxLength": 512, "description": "A regular expression (Rust `regex` syntax) the whole value must match; it must compile."}),
        )
    };
    let string_default = || default_of(json!({"type": "string"}));
    Some(match t {
        FieldType::Text => vec![
            ("min", min_length),
            ("max", length),
            pattern(),
            string_default(),
        ],
        FieldType::Number => vec![
            ("min", min("number")),
            ("max", json!({"type": "number"})),
            default_of(json!({"type": "number"})),
        ],
        FieldType::Integer => vec![
            ("min", min("integer")),
            ("max", json!({"type": "integer"})),
            default_of(json!({"type": "integer"})),
        ],
        FieldType::Bool => vec![default_of(json!({"type": "boolean"}))],
        FieldType::Email | FieldType::Url => vec![pattern(), string_default()],
        FieldType::Datetime => {
            vec![default_of(json!({"type": "string", "format": "date-time"}))]
        }
        FieldType::Select => vec![
            (
                "values",
                json!({"type": "array", "minItems": 1, "uniqueItems": true,
                       "items": {"type": "string", "minLength": 1, "maxLength": 255}}),
            ),
            string_default(),
        ],
        FieldType::Json => vec![
            ("min", min_length),
            (
                "max",
                json!({"type": "integer", "minimum": 0, "description": "Most bytes of a value's JSON text."}),
            ),
            default_of(json!({})),
        ],
        FieldType::GeoPoint => vec![default_of(geo_point_schema())],
        FieldType::File => vec![
            (
                "maxCount",
                json!({"type": "integer", "minimum": 1, "maximum": 1000, "description": "Files the field holds (default 1: the value is one name; above 1, a list)."}),
            ),
            (
                "maxSize",
                json!({"type": "integer", "minimum": 1, "description": "Most bytes of one file (never above files.max_upload_bytes)."}),
            ),
            (
                "mimeTypes",
                json!({"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string"}, "description": "Accepted types, detected from the content: image/png, or image/* for the family's inert types."}),
            ),
            (
                "private",
                json!({"type": "boolean", "description": "Never served to an unidentified caller (use a file token for links)."}),
            ),
            (
                "thumbs",
                json!({"type": "array", "maxItems": 20, "items": {"type": "string", "pattern": "^[0-9]{1,4}x[0-9]{1,4}$"}, "description": "Thumbnail sizes that may be asked for (WxH; 0 keeps the ratio)."}),
            ),
        ],
        FieldType::Yjs => vec![],
        FieldType::Relation => return None,
    })
}

/// The TypeScript type of a field's value (without `| null`).
pub fn ts_type(f: &FieldSpec) -> String {
    match f.field_type {
        FieldType::Text | FieldType::Email | FieldType::Url | FieldType::Datetime => {
            "string".into()
        }
        FieldType::Number | FieldType::Integer => "number".into(),
        FieldType::Bool => "boolean".into(),
        FieldType::Json => "unknown".into(),
        FieldType::Yjs => "Record<string, unknown>".into(),
        FieldType::Select => {
            let values = f.values.as_deref().unwrap_or_default();
            if values.is_empty() {
                "string".into()
            } else {
                values
                    .iter()
                    .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
        }
        FieldType::Relation | FieldType::File if f.multiple => "string[]".into(),
        FieldType::Relation | FieldType::File => "string".into(),
        FieldType::GeoPoint => "{ lat: number; lon: number }".into(),
    }
}

/// What the server checks of a value beyond its type, for generated doc comments.
pub fn ts_note(f: &FieldSpec) -> Option<String> {
    match f.field_type {
        FieldType::Integer => Some("integer".into()),
        FieldType::Email => Some("email address".into()),
        FieldType::Url => Some("http(s) URL".into()),
        FieldType::Datetime => Some("RFC 3339 date-time".into()),
        FieldType::Relation => Some(format!(
            "id{} of `{}` records",
            if f.multiple { "s" } else { "" },
            f.collection.as_deref().unwrap_or_default()
        )),
        FieldType::GeoPoint => Some("lat -90..90, lon -180..180".into()),
        FieldType::File => Some(format!(
            "stored file name{}; download at /v1/files/<collection>/<id>/<name>",
            if f.multiple { "s" } else { "" }
        )),
        FieldType::Yjs => Some("collaborative document; edit through /v1/yjs".into()),
        FieldType::Text
        | FieldType::Number
        | FieldType::Bool
        | FieldType::Select
        | FieldType::Json => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(t: FieldType) -> FieldSpec {
        serde_json::from_value(json!({"name": "f", "type": t.as_str()})).unwrap()
    }

    #[test]
    fn every_kind_round_trips_its_name() {
        for t in FieldType::ALL {
            let parsed: FieldType = serde_json::from_value(json!(t.as_str())).unwrap();
            assert_eq!(parsed, t);
        }
    }

    #[test]
    fn emails() {
        assert!(is_email("a.b+c@example.com"));
        assert!(!is_email("a@b"));
        assert!(!is_email("no at.com"));
        assert!(!is_email("a@@b.com"));
        assert!(!is_email(".a@b.com"));
    }

    #[test]
    fn record_ids() {
        assert!(is_record_id("abc123_-"));
        assert!(!is_record_id(""));
        assert!(!is_record_id("a'b"));
    }

    #[test]
    fn geo_points_are_checked_and_normalised() {
        let f = field(FieldType::GeoPoint);
        assert_eq!(
            check_value(&f, None, &json!({"lon": 13, "lat": 52.5})).unwrap(),
            json!({"lat": 52.5, "lon": 13.0})
        );
        assert_eq!(
            check_value(&f, None, &json!({"lat": 90, "lon": -180})).unwrap(),
            json!({"lat": 90.0, "lon": -180.0})
        );
        for (bad, code) in [
            (json!({"lat": 90.5, "lon": 0}), "out_of_range"),
            (json!({"lat": 0, "lon": 180.01}), "out_of_range"),
            (json!({"lat": "1", "lon": 0}), "invalid_type"),
            (json!({"lat": 1}), "invalid_type"),
            (json!({"lat": 1, "lon": 2, "alt": 3}), "invalid_type"),
            (json!([1, 2]), "invalid_type"),
        ] {
            assert_eq!(check_value(&f, None, &bad).unwrap_err().0, code, "{bad}");
        }
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        // Berlin to Paris is about 878 km; a point to itself is 0; antipodes half
        // the circumference.
        let d = geo_distance_km(52.52, 13.405, 48.8566, 2.3522);
        assert!((d - 878.0).abs() < 5.0, "{d}");
        assert_eq!(geo_distance_km(10.0, 20.0, 10.0, 20.0), 0.0);
        let half = geo_distance_km(0.0, 0.0, 0.0, 180.0);
        assert!(
            (half - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "{half}"
        );
    }

    #[test]
    fn options_follow_the_kind() {
        let mut f = field(FieldType::GeoPoint);
        f.unique = true;
        f.min = Some(1.0);
        let problems: Vec<&str> = check_options(&f).iter().map(|p| p.0).collect();
        assert_eq!(problems, vec!["min", "unique"]);
        let mut n = field(FieldType::Number);
        n.min = Some(-1.5);
        assert!(check_options(&n).is_empty());
        let mut i = field(FieldType::Integer);
        i.min = Some(-1.5);
        assert_eq!(check_options(&i)[0].1, "invalid");
        let mut t = field(FieldType::Text);
        t.min = Some(-1.0);
        assert_eq!(check_options(&t)[0].1, "invalid");
    }
}
