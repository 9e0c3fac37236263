//! Versioned, checksummed migrations of the collections.
//!
//! Every schema change made through the API is written as a migration file
//! (`<version>_<name>.json`) in the migrations folder, meant for version control; a
//! fresh data folder started with a copy of those files reproduces the same collections.
//! A file holds dialect-neutral steps (`up` and `down`), so the same files apply to
//! SQLite and PostgreSQL. Applied migrations are recorded with the SHA-256 of the file;
//! an applied file that was edited afterwards stops start-up.
//!
//! Lintel's own tables are not here: they are embedded in each store (`store::sqlite`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::schema::{CollectionSpec, FieldSpec, IndexSpec};
use crate::store::{Store, StoreError, WriteMeta};

/// One step of a migration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum SchemaOp {
    #[serde(rename_all = "camelCase")]
    CreateCollection {
        collection: CollectionSpec,
    },
    AlterCollection(AlterCollection),
    #[serde(rename_all = "camelCase")]
    DropCollection {
        name: String,
    },
    /// Hand-written SQL, run as it is (for data migrations in hand-made files).
    #[serde(rename_all = "camelCase")]
    Sql {
        sql: String,
    },
}

/// Changes to one collection, applied in the order of the members below.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlterCollection {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_indexes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rename_fields: Vec<RenameField>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_fields: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_indexes: Vec<IndexSpec>,
    /// Replaces the JSON Schema of a document collection (`null` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Replaces the access rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::schema::Rules>,
    /// Changes options of existing fields (applied after `addFields`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_fields: Vec<FieldUpdate>,
    /// Replaces the collection's search language (`null` goes back to the default).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub search_language: Option<Option<String>>,
}

/// New options for an existing field: the full-text search ones. A member left out
/// keeps its value; `null` unsets `weight` or `language`. Turning `searchable` off
/// unsets both unless they are given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldUpdate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searchable: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    #[schema(value_type = Option<String>)]
    pub weight: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    #[schema(value_type = Option<String>)]
    pub language: Option<Option<String>>,
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value (a missing member
/// is `None` through `default`).
pub fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameField {
    pub from: String,
    pub to: String,
}

/// A migration file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub version: String,
    pub name: String,
    pub up: Vec<SchemaOp>,
    #[serde(default)]
    pub down: Vec<SchemaOp>,
}

/// A migration the store records as applied.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: String,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
    /// The migration as it was applied, so it can be reverted without its file.
    pub content: Migration,
}

/// A migration file found on disk.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub path: PathBuf,
    pub migration: Migration,
    pub checksum: String,
}

/// The state of one migration, for `lintel migrate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but the file changed since.
    Modified,
    /// Applied, but the file is gone.
    MissingFile,
}

impl MigrationState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Modified => "MODIFIED",
            MigrationState::MissingFile => "missing file",
        }
    }
}

pub fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes migration versions: UTC time to the millisecond, strictly increasing within
/// a process so two changes in the same millisecond still sort.
#[derive(Debug, Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    /// Never hands out a version at or below `version` (the newest one known), so new
    /// migrations sort after existing ones even when this machine's clock is behind.
    pub fn seed(&self, version: &str) {
        if let Ok(v) = version.parse::<u64>() {
            self.last.fetch_max(v, Ordering::SeqCst);
        }
    }

    pub fn next(&self) -> String {
        let now = time::OffsetDateTime::now_utc();
        let stamp = format_version(now);
        let mut candidate = stamp.parse::<u64>().unwrap_or(0);
        loop {
            let last = self.last.load(Ordering::SeqCst);
            if candidate <= last {
                candidate = last + 1;
            }
            if self
                .last
                .compare_exchange(last, candidate, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return candidate.to_string();
            }
        }
    }
}

fn format_version(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A safe file-name part for a migration name.
pub fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(80);
    if s.is_empty() { "migration".into() } else { s }
}

/// The file name of a migration.
pub fn file_name(m: &Migration) -> String {
    format!("{}_{}.json", m.version, slug(&m.name))
}

/// Serialises a migration the way it is written to disk.
pub fn to_file_bytes(m: &Migration) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(m).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Reads every `*.json` migration in `dir`, sorted by version. A missing folder is empty.
pub fn scan(dir: &Path) -> anyhow::Result<Vec<MigrationFile>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !fname.ends_with(".json") || !fname.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let migration: Migration = serde_json::from_slice(&bytes)
            .with_context(|| format!("migration file {} is not valid", path.display()))?;
        let prefix = fname.split('_').next().unwrap_or_default();
        anyhow::ensure!(
            prefix == migration.version,
            "migration file {} declares version {} but its name says {prefix}",
            path.display(),
            migration.version
        );
        out.push(MigrationFile {
            checksum: checksum(&bytes),
            path,
            migration,
        });
    }
    out.sort_by_key(|f| version_key(&f.migration.version));
    let mut seen = BTreeMap::new();
    for f in &out {
        if let Some(other) = seen.insert(f.migration.version.clone(), f.path.clone()) {
            anyhow::bail!(
                "two migration files share version {}: {} and {}",
                f.migration.version,
                other.display(),
                f.path.display()
            );
        }
    }
    Ok(out)
}

fn version_key(v: &str) -> (usize, String) {
    (v.len(), v.to_owned())
}

/// Files and records side by side, in version order.
pub fn status(
    files: &[MigrationFile],
    applied: &[AppliedMigration],
) -> Vec<(String, String, MigrationState)> {
    let mut rows: BTreeMap<(usize, String), (String, MigrationState)> = BTreeMap::new();
    for f in files {
        let state = match applied.iter().find(|a| a.version == f.migration.version) {
            Some(a) if a.checksum == f.checksum => MigrationState::Applied,
            Some(_) => MigrationState::Modified,
            None => MigrationState::Pending,
        };
        rows.insert(
            version_key(&f.migration.version),
            (f.migration.name.clone(), state),
        );
    }
    for a in applied {
        rows.entry(version_key(&a.version))
            .or_insert((a.name.clone(), MigrationState::MissingFile));
    }
    rows.into_iter()
        .map(|((_, v), (name, state))| (v, name, state))
        .collect()
}

/// Applies every pending file in version order; refuses to go on when an applied file
/// was edited. Returns the versions applied.
pub async fn apply_pending(store: &dyn Store, dir: &Path) -> anyhow::Result<Vec<String>> {
    let files = scan(dir)?;
    let applied = store.applied_migrations().await.map_err(store_err)?;
    for f in &files {
        if let Some(a) = applied.iter().find(|a| a.version == f.migration.version)
            && a.checksum != f.checksum
        {
            anyhow::bail!(
                "migration {} ({}) was changed after it was applied (checksum {} recorded, {} on disk). \
                 Restore the file, or revert the migration with `lintel migrate down` before editing it.",
                f.migration.version,
                f.path.display(),
                a.checksum,
                f.checksum
            );
        }
    }
    let mut done = Vec::new();
    for f in files {
        if applied.iter().any(|a| a.version == f.migration.version) {
            continue;
        }
        let version = f.migration.version.clone();
        let applied_now = store
            .apply_migration(f.migration, f.checksum, WriteMeta::default())
            .await
            .map_err(store_err)
            .with_context(|| format!("applying migration {}", f.path.display()))?;
        if applied_now {
            done.push(version);
        }
    }
    Ok(done)
}

/// Reverts the last `steps` applied migrations. Returns the versions reverted.
pub async fn revert_last(store: &dyn Store, steps: usize) -> anyhow::Result<Vec<String>> {
    let applied = store.applied_migrations().await.map_err(store_err)?;
    let mut done = Vec::new();
    for a in applied.into_iter().rev().take(steps) {
        anyhow::ensure!(
            !a.content.down.is_empty(),
            "migration {} ({}) has no `down` steps, so it cannot be reverted",
            a.version,
            a.name
        );
        store
            .revert_migration(a.content, WriteMeta::default())
            .await
            .map_err(store_err)
            .with_context(|| format!("reverting migration {}", a.version))?;
        done.push(a.version);
    }
    Ok(done)
}

/// Writes an empty migration for a person to fill in; returns its path.
pub fn create_empty(dir: &Path, clock: &VersionClock, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let m = Migration {
        version: clock.next(),
        name: slug(name),
        up: Vec::new(),
        down: Vec::new(),
    };
    let path = dir.join(file_name(&m));
    std::fs::write(&path, to_file_bytes(&m))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes a migration file atomically: to a temporary name, then renamed.
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    pub checksum: String,
}

impl PendingFile {
    pub fn stage(dir: &Path, m: &Migration) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let bytes = to_file_bytes(m);
        let path = dir.join(file_name(m));
        let tmp = dir.join(format!(".{}.tmp", file_name(m)));
        std::fs::write(&tmp, &bytes)?;
        Ok(Self {
            tmp,
            path,
            checksum: checksum(&bytes),
        })
    }

    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)
    }

    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn store_err(e: StoreError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        let c = VersionClock::default();
        let a = c.next();
        let b = c.next();
        assert!(b.parse::<u64>().unwrap_or(0) > a.parse::<u64>().unwrap_or(0));
        assert_eq!(a.len(), 17);
    }

    #[test]
    fn ops_round_trip() {
        let m = Migration {
            version: "1".into(),
            name: "x".into(),
            up: vec![
                SchemaOp::DropCollection { name: "a".into() },
                SchemaOp::AlterCollection(AlterCollection {
                    name: "b".into(),
                    drop_fields: vec!["f".into()],
                    ..Default::default()
                }),
            ],
            down: vec![],
        };
        let bytes = to_file_bytes(&m);
        let back: Result<Migration, _> = serde_json::from_slice(&bytes);
        assert_eq!(back.ok(), Some(m));
    }
}
