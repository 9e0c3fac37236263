//! Records as clients see them: system fields, then fields (or the document), then
//! links, with hidden fields left out. Rendering takes a [`Visible`] proof, so only a
//! record some access check granted can be rendered.

use serde_json::{Map, Value, json};

use super::permit::Visible;
use crate::schema::Collection;

/// The href of a record.
pub fn record_href(coll: &str, id: &str) -> String {
    format!("/v1/collections/{coll}/records/{id}")
}

/// A record as clients see it: system fields, then fields (or the document), links.
pub fn render(
    coll: &Collection,
    visible: Visible<'_>,
    fields: Option<&[String]>,
) -> Map<String, Value> {
    let record = visible.record();
    let mut out = Map::with_capacity(record.data.len() + 5);
    let want = |name: &str| fields.is_none_or(|f| f.iter().any(|x| x == name));
    if want("id") {
        out.insert("id".into(), Value::String(record.id.clone()));
    }
    if want("created") {
        out.insert("created".into(), Value::String(record.created.clone()));
    }
    if want("updated") {
        out.insert("updated".into(), Value::String(record.updated.clone()));
    }
    if want("version") {
        out.insert("version".into(), Value::from(record.version));
    }
    let hidden = coll.has_hidden();
    for (k, v) in &record.data {
        if want(k) && !(hidden && coll.is_hidden(k)) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(
        "_links".into(),
        json!({ "self": { "href": record_href(coll.name(), &record.id) } }),
    );
    out
}

/// A record as clients see it, serialised straight from the stored record (the same
/// members and order as [`render`] without `fields`), without copying any value.
pub struct RecordView<'a> {
    pub coll: &'a Collection,
    pub record: Visible<'a>,
}

impl serde::Serialize for RecordView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Href(String);
        impl serde::Serialize for Href {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("href", &self.0)?;
                m.end()
            }
        }
        struct Links(String);
        impl serde::Serialize for Links {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("self", &Href(self.0.clone()))?;
                m.end()
            }
        }
        let r = self.record.record();
        let hidden = self.coll.has_hidden();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &r.id)?;
        m.serialize_entry("created", &r.created)?;
        m.serialize_entry("updated", &r.updated)?;
        m.serialize_entry("version", &r.version)?;
        for (k, v) in &r.data {
            if !(hidden && self.coll.is_hidden(k)) {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("_links", &Links(record_href(self.coll.name(), &r.id)))?;
        m.end()
    }
}
