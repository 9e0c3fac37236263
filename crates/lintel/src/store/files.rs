//! The tables of uploaded files (system migration 12), the same text for both
//! dialects: each kept file's metadata, and the position of the files reaper in the
//! event log. The statements are built by `crate::files`.

/// Files' metadata and the reaper's position.
pub const TABLES: &str = "CREATE TABLE _lintel_files (
            name TEXT PRIMARY KEY NOT NULL,
            collection TEXT NOT NULL,
            record TEXT NOT NULL,
            field TEXT NOT NULL,
            blob TEXT NOT NULL,
            original TEXT NOT NULL,
            size BIGINT NOT NULL,
            type TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            uploader TEXT,
            created BIGINT NOT NULL
        );
        CREATE INDEX _lintel_files_record ON _lintel_files (collection, record);
        CREATE TABLE _lintel_files_cursor (
            id INTEGER PRIMARY KEY NOT NULL,
            seq BIGINT NOT NULL
        );
        INSERT INTO _lintel_files_cursor (id, seq) VALUES (1, 0);";

/// Resumable uploads (system migration 13): one row per tus upload, its owner, its
/// declared and received lengths, the client's metadata, and when it expires.
pub const UPLOADS_TABLE: &str = "CREATE TABLE _lintel_uploads (
            id TEXT PRIMARY KEY NOT NULL,
            owner TEXT NOT NULL,
            length BIGINT NOT NULL,
            received BIGINT NOT NULL,
            filename TEXT,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL,
            attached BIGINT NOT NULL
        );
        CREATE INDEX _lintel_uploads_owner ON _lintel_uploads (owner);
        CREATE INDEX _lintel_uploads_expires ON _lintel_uploads (expires);";

/// Encryption at rest (system migration 14): a file's own key, wrapped by a master key.
pub const FILE_KEYS: &str = "ALTER TABLE _lintel_files ADD COLUMN dek TEXT;";
