//! The table of collaborative documents (system migration 15), the same text for both
//! dialects: per document (collection, record, field), the compacted state at `seq` 0
//! and the updates appended since, each a Yjs update (lib0 v1) in base64. The
//! statements are built by `crate::yjs`.

pub const TABLE: &str = "CREATE TABLE _lintel_yjs (
            collection TEXT NOT NULL,
            record TEXT NOT NULL,
            field TEXT NOT NULL,
            seq BIGINT NOT NULL,
            data TEXT NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (collection, record, field, seq)
        );";
