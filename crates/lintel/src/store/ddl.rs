//! Turns migration steps into DDL for a dialect, against the catalog as it stands inside
//! the migration's transaction. Pure: a store runs the statements and applies the
//! catalog changes this returns, in one transaction.
//!
//! DDL cannot take bound parameters, so every name written here comes from a spec that
//! passed `validate_spec` (identifiers only) and is quoted.

use std::collections::BTreeMap;

use crate::migrations::{AlterCollection, SchemaOp};
use crate::schema::search::{SearchConfig, TSVECTOR_COLUMN, fts_table};
use crate::schema::{
    CollectionKind, CollectionSpec, FieldType, IndexSpec, SYSTEM_FIELDS, index_name, normalize_spec,
};
use crate::store::filter::validate_spec;
use crate::store::search as search_state;
use crate::store::sql::{Dialect, column_type, quote_ident, sqlite_json_path};

/// What a step does to the catalog table.
#[derive(Debug, Clone)]
pub enum CatalogChange {
    Upsert(Box<CollectionSpec>),
    Delete(String),
    None,
}

/// The statements of one step and its catalog change.
#[derive(Debug, Clone)]
pub struct Step {
    pub statements: Vec<String>,
    pub catalog: CatalogChange,
}

/// Plans `ops` against `specs` (name -> spec), updating `specs` as it goes so later
/// steps see earlier ones. An error says, for a person, why the step cannot apply.
pub fn plan(
    dialect: Dialect,
    ops: &[SchemaOp],
    specs: &mut BTreeMap<String, CollectionSpec>,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::with_capacity(ops.len());
    for op in ops {
        steps.push(match op {
            SchemaOp::CreateCollection { collection } => create(dialect, collection, specs)?,
            SchemaOp::AlterCollection(alter) => alter_collection(dialect, alter, specs)?,
            SchemaOp::DropCollection { name } => drop(dialect, name, specs)?,
            SchemaOp::Sql { sql } => Step {
                statements: vec![sql.clone()],
                catalog: CatalogChange::None,
            },
        });
    }
    Ok(steps)
}

fn names(specs: &BTreeMap<String, CollectionSpec>) -> Vec<String> {
    specs.keys().cloned().collect()
}

/// Index names share one namespace with tables (and each other) in the database, so a
/// new index's name must not be taken by any collection or another collection's index.
fn check_index_names(
    spec: &CollectionSpec,
    specs: &BTreeMap<String, CollectionSpec>,
) -> Result<(), String> {
    for idx in &spec.indexes {
        let Some(name) = &idx.name else { continue };
        for other in specs.values().filter(|o| o.name != spec.name) {
            let taken = other.name.eq_ignore_ascii_case(name)
                || other.indexes.iter().any(|i| {
                    i.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                });
            if taken {
                return Err(format!(
                    "the index name '{name}' is already used by collection '{}'",
                    other.name
                ));
            }
        }
    }
    Ok(())
}

fn describe(errors: &crate::validation::FieldErrors) -> String {
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn create(
    dialect: Dialect,
    spec: &CollectionSpec,
    specs: &mut BTreeMap<String, CollectionSpec>,
) -> Result<Step, String> {
    let mut spec = spec.clone();
    normalize_spec(&mut spec);
    let errors = validate_spec(&spec, &names(specs), false);
    if !errors.is_empty() {
        return Err(format!(
            "collection '{}' is invalid: {}",
            spec.name,
            describe(&errors)
        ));
    }
    check_index_names(&spec, specs)?;
    let t = quote_ident(&spec.name);
    let text = match dialect {
        Dialect::Sqlite => "TEXT",
        Dialect::Postgres => "TEXT COLLATE \"C\"",
    };
    let mut cols = vec![
        format!("\"id\" {text} PRIMARY KEY NOT NULL"),
        format!("\"created\" {text} NOT NULL"),
        format!("\"updated\" {text} NOT NULL"),
        "\"version\" BIGINT NOT NULL".to_owned(),
    ];
    match spec.kind {
        CollectionKind::Document => cols.push(format!(
            "\"data\" {} NOT NULL",
            if dialect == Dialect::Postgres {
                "JSONB"
            } else {
                "TEXT"
            }
        )),
        CollectionKind::Table | CollectionKind::Auth => {
            for f in &spec.fields {
                cols.push(format!(
                    "{} {}",
                    quote_ident(&f.name),
                    column_type(dialect, f)
                ));
            }
        }
    }
    let mut statements = vec![format!("CREATE TABLE {t} ({})", cols.join(", "))];
    statements.push(format!(
        "CREATE INDEX {} ON {t} (\"created\")",
        quote_ident(&format!("{}__created__idx", spec.name))
    ));
    if dialect == Dialect::Postgres && spec.kind == CollectionKind::Document {
        // Containment filters on the document (`path = value`) use this index.
        statements.push(format!(
            "CREATE INDEX {} ON {t} USING GIN (\"data\" jsonb_path_ops)",
            quote_ident(&format!("{}__data__gin", spec.name))
        ));
    }
    for f in &spec.fields {
        if f.unique {
            statements.push(unique_field_index(&spec.name, &f.name));
        }
    }
    for idx in &spec.indexes {
        statements.push(create_index(dialect, &spec, idx));
    }
    if let Some(cfg) = SearchConfig::of(&spec) {
        statements.extend(create_search(dialect, &spec.name, &cfg));
        statements.push(search_state::record_ddl(&spec.name, &cfg.signature()));
    }
    specs.insert(spec.name.clone(), spec.clone());
    Ok(Step {
        statements,
        catalog: CatalogChange::Upsert(Box::new(spec)),
    })
}

/// The search index of a collection, made from nothing: on SQLite an FTS5 table with
/// one column per weight class, fed by triggers so every write path keeps it in step;
/// on PostgreSQL a `tsvector` column and its GIN index, written with each row. Rows
/// already there are indexed by a rebuild job (`search::rebuild`).
fn create_search(dialect: Dialect, table: &str, cfg: &SearchConfig) -> Vec<String> {
    match dialect {
        Dialect::Sqlite => {
            let mut out = vec![format!(
                "CREATE VIRTUAL TABLE {} USING fts5(a, b, c, d, content='', contentless_delete=1, \
                 tokenize=\"unicode61 remove_diacritics 0 categories 'L* N* Co M*'\")",
                quote_ident(&fts_table(table))
            )];
            out.extend(sqlite_triggers(table, cfg));
            out
        }
        Dialect::Postgres => vec![
            format!(
                "ALTER TABLE {} ADD COLUMN {} tsvector",
                quote_ident(table),
                quote_ident(TSVECTOR_COLUMN)
            ),
            format!(
                "CREATE INDEX {} ON {} USING GIN ({})",
                quote_ident(&format!("_lintel_search_{table}")),
                quote_ident(table),
                quote_ident(TSVECTOR_COLUMN)
            ),
        ],
    }
}

fn drop_search(dialect: Dialect, table: &str) -> Vec<String> {
    match dialect {
        Dialect::Sqlite => {
            let mut out = drop_sqlite_triggers(table);
            out.push(format!("DROP TABLE {}", quote_ident(&fts_table(table))));
            out
        }
        Dialect::Postgres => vec![format!(
            "ALTER TABLE {} DROP COLUMN {}",
            quote_ident(table),
            quote_ident(TSVECTOR_COLUMN)
        )],
    }
}

/// The FTS5 row of a record, as SQL over `row` (`new` or the table): per weight
/// class, `lintel_search_text(language, text, ...)` of its fields (a function each
/// SQLite connection of Lintel registers).
pub fn sqlite_search_values(row: &str, cfg: &SearchConfig) -> String {
    (0..4)
        .map(|class| {
            let args: Vec<String> = cfg
                .fields
                .iter()
                .filter(|f| f.class == class)
                .map(|f| format!("'{}', {row}.{}", f.language.as_str(), quote_ident(&f.name)))
                .collect();
            if args.is_empty() {
                "''".to_owned()
            } else {
                format!("lintel_search_text({})", args.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sqlite_triggers(table: &str, cfg: &SearchConfig) -> Vec<String> {
    let fts = quote_ident(&fts_table(table));
    let t = quote_ident(table);
    let name = |suffix: &str| quote_ident(&format!("{}_{suffix}", fts_table(table)));
    let insert = format!(
        "INSERT INTO {fts} (rowid, a, b, c, d) VALUES (new._rowid_, {})",
        sqlite_search_values("new", cfg)
    );
    let delete = format!("DELETE FROM {fts} WHERE rowid = old._rowid_");
    vec![
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN {insert}; END",
            name("ai")
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN {delete}; END",
            name("ad")
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN {delete}; {insert}; END",
            name("au")
        ),
    ]
}

fn drop_sqlite_triggers(table: &str) -> Vec<String> {
    ["ai", "ad", "au"]
        .iter()
        .map(|s| {
            format!(
                "DROP TRIGGER IF EXISTS {}",
                quote_ident(&format!("{}_{s}", fts_table(table)))
            )
        })
        .collect()
}

fn unique_field_index(table: &str, field: &str) -> String {
    format!(
        "CREATE UNIQUE INDEX {} ON {} ({})",
        quote_ident(&index_name(table, &[field.to_owned()], true)),
        quote_ident(table),
        quote_ident(field)
    )
}

fn create_index(dialect: Dialect, spec: &CollectionSpec, idx: &IndexSpec) -> String {
    let name = idx
        .name
        .clone()
        .unwrap_or_else(|| index_name(&spec.name, &idx.fields, idx.unique));
    let cols: Vec<String> = idx
        .fields
        .iter()
        .map(|f| {
            if spec.kind == CollectionKind::Document && !SYSTEM_FIELDS.contains(&f.as_str()) {
                let path: Vec<String> = f.split('.').map(str::to_owned).collect();
                match dialect {
                    // The path is made of validated identifiers and integers only.
                    Dialect::Sqlite => {
                        format!("json_extract(\"data\", '{}')", sqlite_json_path(&path))
                    }
                    Dialect::Postgres => format!("(\"data\" #> '{{{}}}')", path.join(",")),
                }
            } else {
                quote_ident(f)
            }
        })
        .collect();
    format!(
        "CREATE {}INDEX {} ON {} ({})",
        if idx.unique { "UNIQUE " } else { "" },
        quote_ident(&name),
        quote_ident(&spec.name),
        cols.join(", ")
    )
}

fn drop_index(name: &str) -> String {
    format!("DROP INDEX {}", quote_ident(name))
}

fn alter_collection(
    dialect: Dialect,
    alter: &AlterCollection,
    specs: &mut BTreeMap<String, CollectionSpec>,
) -> Result<Step, String> {
    let Some(old) = specs.get(&alter.name).cloned() else {
        return Err(format!("no collection '{}'", alter.name));
    };
    let mut spec = old.clone();
    let t = quote_ident(&spec.name);
    let mut statements = Vec::new();
    let old_search = SearchConfig::of(&old);
    // Triggers name the columns: they go first and come back for the new fields.
    if dialect == Dialect::Sqlite && old_search.is_some() {
        statements.extend(drop_sqlite_triggers(&spec.name));
    }

    for name in &alter.drop_indexes {
        let Some(pos) = spec
            .indexes
            .iter()
            .position(|i| i.name.as_deref() == Some(name.as_str()))
        else {
            return Err(format!("collection '{}' has no index '{name}'", spec.name));
        };
        spec.indexes.remove(pos);
        statements.push(drop_index(name));
    }

    for name in &alter.drop_fields {
        let Some(pos) = spec.fields.iter().position(|f| &f.name == name) else {
            return Err(format!("collection '{}' has no field '{name}'", spec.name));
        };
        let field = spec.fields.remove(pos);
        // Indexes over the field go with it.
        let mut kept = Vec::new();
        for idx in std::mem::take(&mut spec.indexes) {
            if idx.fields.iter().any(|f| f == name) {
                if let Some(n) = &idx.name {
                    statements.push(drop_index(n));
                }
            } else {
                kept.push(idx);
            }
        }
        spec.indexes = kept;
        if field.unique {
            statements.push(drop_index(&index_name(
                &spec.name,
                std::slice::from_ref(name),
                true,
            )));
        }
        statements.push(format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(name)));
    }

    for r in &alter.rename_fields {
        let Some(pos) = spec.fields.iter().position(|f| f.name == r.from) else {
            return Err(format!(
                "collection '{}' has no field '{}'",
                spec.name, r.from
            ));
        };
        statements.push(format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {}",
            quote_ident(&r.from),
            quote_ident(&r.to)
        ));
        if spec.fields[pos].unique {
            // Keep the unique index's name in step with the field so a later drop finds it.
            statements.push(drop_index(&index_name(
                &spec.name,
                std::slice::from_ref(&r.from),
                true,
            )));
            statements.push(unique_field_index(&spec.name, &r.to));
        }
        spec.fields[pos].name = r.to.clone();
        for idx in &mut spec.indexes {
            for f in &mut idx.fields {
                if *f == r.from {
                    *f = r.to.clone();
                }
            }
        }
    }

    for f in &alter.add_fields {
        statements.push(format!(
            "ALTER TABLE {t} ADD COLUMN {} {}",
            quote_ident(&f.name),
            column_type(dialect, f)
        ));
        if f.unique {
            statements.push(unique_field_index(&spec.name, &f.name));
        }
        // Existing records start with an empty collaborative document.
        if f.field_type == crate::schema::kinds::FieldType::Yjs {
            statements.push(format!("UPDATE {t} SET {} = '{{}}'", quote_ident(&f.name)));
        }
        spec.fields.push(f.clone());
    }

    for u in &alter.update_fields {
        let Some(f) = spec.fields.iter_mut().find(|f| f.name == u.name) else {
            return Err(format!(
                "collection '{}' has no field '{}'",
                spec.name, u.name
            ));
        };
        if u.searchable.is_none() && u.weight.is_none() && u.language.is_none() {
            return Err(format!("nothing to change in field '{}'", u.name));
        }
        if let Some(on) = u.searchable {
            f.searchable = on;
            if !on {
                f.weight = None;
                f.language = None;
            }
        }
        if let Some(w) = &u.weight {
            f.weight = w.clone();
        }
        if let Some(l) = &u.language {
            f.language = l.clone();
        }
    }

    if let Some(l) = &alter.search_language {
        spec.search_language = l.clone();
    }

    let mut added = Vec::new();
    for idx in &alter.add_indexes {
        let mut idx = idx.clone();
        if idx.name.is_none() {
            idx.name = Some(index_name(&spec.name, &idx.fields, idx.unique));
        }
        added.push(idx.clone());
        spec.indexes.push(idx);
    }

    if let Some(schema) = &alter.schema {
        spec.schema = if schema.is_null() {
            None
        } else {
            Some(schema.clone())
        };
    }

    if let Some(rules) = &alter.rules {
        spec.rules = rules.clone();
    }

    let errors = validate_spec(&spec, &names(specs), true);
    if !errors.is_empty() {
        return Err(format!(
            "collection '{}' would be invalid: {}",
            spec.name,
            describe(&errors)
        ));
    }
    check_index_names(&spec, specs)?;
    if alter.drop_fields.is_empty()
        && alter.add_fields.is_empty()
        && alter.rename_fields.is_empty()
        && alter.add_indexes.is_empty()
        && alter.drop_indexes.is_empty()
        && alter.schema.is_none()
        && alter.rules.is_none()
        && alter.update_fields.is_empty()
        && alter.search_language.is_none()
    {
        return Err(format!("nothing to change in collection '{}'", spec.name));
    }
    for idx in &added {
        statements.push(create_index(dialect, &spec, idx));
    }
    let new_search = SearchConfig::of(&spec);
    match (&old_search, &new_search) {
        (None, Some(cfg)) => statements.extend(create_search(dialect, &spec.name, cfg)),
        (Some(_), None) => statements.extend(drop_search(dialect, &spec.name)),
        (Some(_), Some(cfg)) if dialect == Dialect::Sqlite => {
            statements.extend(sqlite_triggers(&spec.name, cfg));
        }
        _ => {}
    }
    // The index stays right for the records already there unless the change touched
    // what they hold in it; then the state keeps the old signature and a rebuild is due.
    match &new_search {
        None => statements.push(search_state::forget_ddl(&spec.name)),
        Some(cfg) if !index_changed(&old, &spec, alter) => {
            statements.push(match &old_search {
                None => search_state::record_ddl(&spec.name, &cfg.signature()),
                Some(was) => {
                    search_state::advance_ddl(&spec.name, &was.signature(), &cfg.signature())
                }
            });
        }
        Some(_) => {}
    }
    specs.insert(spec.name.clone(), spec.clone());
    Ok(Step {
        statements,
        catalog: CatalogChange::Upsert(Box::new(spec)),
    })
}

/// Whether the index of the records already there no longer matches the settings
/// after `alter`: a searchable field dropped, or one kept whose weight or language
/// changed or that became searchable. Fields added by the change are empty in old
/// records.
pub fn index_changed(old: &CollectionSpec, new: &CollectionSpec, alter: &AlterCollection) -> bool {
    let Some(new_cfg) = SearchConfig::of(new) else {
        return false;
    };
    let rename = |name: &str| {
        let mut n = name.to_owned();
        for r in &alter.rename_fields {
            if r.from == n {
                n = r.to.clone();
            }
        }
        n
    };
    let old_cfg = SearchConfig::of(old).map(|c| c.fields).unwrap_or_default();
    if old_cfg.iter().any(|f| alter.drop_fields.contains(&f.name)) {
        return true;
    }
    let mut before: Vec<(String, usize, &str)> = old_cfg
        .iter()
        .map(|f| (rename(&f.name), f.class, f.language.as_str()))
        .collect();
    let mut after: Vec<(String, usize, &str)> = new_cfg
        .fields
        .iter()
        .filter(|f| !alter.add_fields.iter().any(|a| a.name == f.name))
        .map(|f| (f.name.clone(), f.class, f.language.as_str()))
        .collect();
    before.sort();
    after.sort();
    before != after
}

fn drop(
    dialect: Dialect,
    name: &str,
    specs: &mut BTreeMap<String, CollectionSpec>,
) -> Result<Step, String> {
    if !specs.contains_key(name) {
        return Err(format!("no collection '{name}'"));
    }
    let referrers: Vec<String> = specs
        .values()
        .filter(|s| s.name != name)
        .filter(|s| {
            s.fields.iter().any(|f| {
                f.field_type == FieldType::Relation && f.collection.as_deref() == Some(name)
            })
        })
        .map(|s| s.name.clone())
        .collect();
    if !referrers.is_empty() {
        return Err(format!(
            "collection '{name}' is the target of relations in {}; drop those fields first",
            referrers.join(", ")
        ));
    }
    let mut statements = Vec::new();
    if let Some(spec) = specs.remove(name)
        && dialect == Dialect::Sqlite
        && SearchConfig::of(&spec).is_some()
    {
        statements.push(format!("DROP TABLE {}", quote_ident(&fts_table(name))));
    }
    statements.push(format!("DROP TABLE {}", quote_ident(name)));
    statements.push(search_state::forget_ddl(name));
    Ok(Step {
        statements,
        catalog: CatalogChange::Delete(name.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FieldSpec;

    fn field(name: &str, t: FieldType) -> FieldSpec {
        FieldSpec::new(name, t)
    }

    #[test]
    fn create_then_drop() {
        let mut specs = BTreeMap::new();
        let spec = CollectionSpec {
            name: "posts".into(),
            kind: CollectionKind::Table,
            fields: vec![field("title", FieldType::Text)],
            indexes: vec![],
            schema: None,
            rules: Default::default(),
            search_language: None,
        };
        let steps = plan(
            Dialect::Sqlite,
            &[SchemaOp::CreateCollection { collection: spec }],
            &mut specs,
        );
        assert!(steps.is_ok());
        assert!(specs.contains_key("posts"));
        let again = plan(
            Dialect::Sqlite,
            &[SchemaOp::DropCollection {
                name: "posts".into(),
            }],
            &mut specs,
        );
        assert!(again.is_ok());
        assert!(specs.is_empty());
        let missing = plan(
            Dialect::Sqlite,
            &[SchemaOp::DropCollection {
                name: "posts".into(),
            }],
            &mut specs,
        );
        assert!(missing.is_err());
    }
}
