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
