//! Driver errors in one vocabulary. Each driver only sorts its native error into a
//! [`Failure`] (that part is truly driver-specific: codes and messages); what a
//! failure means for a client is decided once, here, so both stores answer the same
//! input the same way. The drivers' tests feed the same statements to each and
//! expect the same [`Failure`] kinds.

use crate::schema::Collection;
use crate::store::StoreError;
use crate::store::write::unique_violation;
use crate::validation::{FieldErrors, push_field_error};

/// What went wrong, as both drivers can tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A unique index or primary key refused the row: the index (or constraint) name
    /// when the driver gives it, else the columns it names.
    Unique {
        index: Option<String>,
        columns: Vec<String>,
    },
    /// A value the column cannot hold: a CHECK or NOT NULL constraint, a number out of
    /// range, text the encoding refuses.
    BadValue,
    /// The database cannot serve now: busy, locked, a deadlock, a cancelled statement,
    /// a read-only server, a lost connection.
    Unavailable(String),
    /// A table or column that is not there (a schema change raced the statement).
    MissingSchema(String),
    /// Anything else (logged; a 500 for the client).
    Other(String),
}

impl Failure {
    /// The store error a failure of a statement on `coll` (if any) means.
    pub(crate) fn into_store_error(self, coll: Option<&Collection>) -> StoreError {
        match self {
            Failure::Unique { index, columns } => {
                let fields = unique_fields(index.as_deref(), columns.clone(), coll);
                if fields.is_empty() {
                    StoreError::Internal(format!(
                        "a unique constraint outside the schema failed: index {index:?}, columns {columns:?}"
                    ))
                } else {
                    StoreError::Constraint(unique_violation(&fields))
                }
            }
            // A value a record's column cannot hold is the client's to fix; in one of
            // Lintel's own tables it is a bug.
            Failure::BadValue if coll.is_none() => {
                StoreError::Internal("a value one of Lintel's own tables refuses".into())
            }
            Failure::BadValue => {
                let mut errors = FieldErrors::new();
                push_field_error(
                    &mut errors,
                    "value",
                    "invalid_value",
                    "a value cannot be stored (out of range or not representable)",
                );
                StoreError::Constraint(errors)
            }
            Failure::Unavailable(msg) => StoreError::Unavailable(msg),
            Failure::MissingSchema(msg) => StoreError::Schema(msg),
            Failure::Other(msg) => StoreError::Internal(msg),
        }
    }
}

/// The fields a unique failure is about: those of the named index (one of the
/// collection's index specs, or the index a `unique` field option generates), else
/// the columns the driver named (fields of the collection, or `id`).
fn unique_fields(
    index: Option<&str>,
    columns: Vec<String>,
    coll: Option<&Collection>,
) -> Vec<String> {
    if let (Some(index), Some(coll)) = (index, coll) {
        if let Some(idx) = coll
            .spec
            .indexes
            .iter()
            .find(|i| i.name.as_deref() == Some(index))
        {
            return idx.fields.clone();
        }
        let generated: Vec<String> = coll
            .fields()
            .iter()
            .filter(|f| {
                crate::schema::index_name(coll.name(), std::slice::from_ref(&f.name), true) == index
            })
            .map(|f| f.name.clone())
            .collect();
        if !generated.is_empty() {
            return generated;
        }
        if index.ends_with("_pkey") {
            return vec!["id".to_owned()];
        }
    }
    columns
}

impl Failure {
    /// The kind's name, for tests that compare drivers.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Unique { .. } => "unique",
            Failure::BadValue => "bad_value",
            Failure::Unavailable(_) => "unavailable",
            Failure::MissingSchema(_) => "missing_schema",
            Failure::Other(_) => "other",
        }
    }
}

/// The same inputs for each driver's test: a table, then statements that fail and
/// the kind each must be sorted into (`$1`-free SQL valid on both stores).
#[cfg(test)]
pub(crate) const DRIVER_CASES_SETUP: &str = "CREATE TABLE lintel_failure_cases (
        id TEXT PRIMARY KEY NOT NULL,
        slug TEXT,
        n INTEGER NOT NULL,
        c INTEGER CHECK (c > 0)
    );
    CREATE UNIQUE INDEX lintel_failure_cases__slug__uniq ON lintel_failure_cases (slug);
    INSERT INTO lintel_failure_cases (id, slug, n, c) VALUES ('a', 's', 1, 1);";

#[cfg(test)]
pub(crate) const DRIVER_CASES: &[(&str, &str)] = &[
    (
        "INSERT INTO lintel_failure_cases (id, slug, n, c) VALUES ('a', 'other', 1, 1)",
        "unique",
    ),
    (
        "INSERT INTO lintel_failure_cases (id, slug, n, c) VALUES ('b', 's', 1, 1)",
        "unique",
    ),
    (
        "INSERT INTO lintel_failure_cases (id, slug, n, c) VALUES ('c', 'x', NULL, 1)",
        "bad_value",
    ),
    (
        "INSERT INTO lintel_failure_cases (id, slug, n, c) VALUES ('d', 'y', 1, 0)",
        "bad_value",
    ),
    ("SELECT * FROM lintel_no_such_table", "missing_schema"),
    (
        "SELECT no_such_column FROM lintel_failure_cases",
        "missing_schema",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::CollectionSpec;
    use serde_json::json;

    fn posts() -> Collection {
        let spec: CollectionSpec = serde_json::from_value(json!({
            "name": "posts",
            "fields": [
                {"name": "slug", "type": "text", "unique": true},
                {"name": "a", "type": "text"},
                {"name": "b", "type": "text"},
            ],
            "indexes": [{"name": "posts_ab", "fields": ["a", "b"], "unique": true}],
        }))
        .unwrap();
        Collection::compile(spec, String::new(), String::new()).unwrap()
    }

    fn field_codes(e: StoreError) -> Vec<(String, String)> {
        match e {
            StoreError::Constraint(errors) => errors
                .iter()
                .map(|(k, v)| (k.clone(), v.code.to_string()))
                .collect(),
            other => panic!("not a constraint: {other:?}"),
        }
    }

    #[test]
    fn unique_failures_name_the_fields_however_the_driver_said_it() {
        let coll = posts();
        let by_generated = Failure::Unique {
            index: Some("posts__slug__uniq".into()),
            columns: vec![],
        };
        let by_columns = Failure::Unique {
            index: None,
            columns: vec!["slug".into()],
        };
        assert_eq!(
            field_codes(by_generated.into_store_error(Some(&coll))),
            field_codes(by_columns.into_store_error(Some(&coll))),
        );
        let by_spec = Failure::Unique {
            index: Some("posts_ab".into()),
            columns: vec![],
        };
        assert_eq!(
            field_codes(by_spec.into_store_error(Some(&coll))),
            vec![("a".into(), "unique".into()), ("b".into(), "unique".into())]
        );
        let unknown = Failure::Unique {
            index: Some("elsewhere".into()),
            columns: vec![],
        };
        assert!(matches!(
            unknown.into_store_error(Some(&coll)),
            StoreError::Internal(_)
        ));
    }

    #[test]
    fn bad_values_are_field_errors_of_records_and_bugs_elsewhere() {
        let coll = posts();
        assert_eq!(
            field_codes(Failure::BadValue.into_store_error(Some(&coll))),
            vec![("value".into(), "invalid_value".into())]
        );
        assert!(matches!(
            Failure::BadValue.into_store_error(None),
            StoreError::Internal(_)
        ));
    }
}
