//! The tables of webhooks and their deliveries (system migration 10), the same text
//! for both dialects: times are epoch milliseconds, JSON is text. The statements are
//! built by `crate::webhooks`.

/// Webhooks, their deliveries, and the position of the fan-out in the event log.
pub const TABLES: &str = "CREATE TABLE _lintel_webhooks (
            id TEXT PRIMARY KEY NOT NULL,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            collection TEXT,
            filter TEXT,
            description TEXT,
            enabled BIGINT NOT NULL,
            headers TEXT,
            ordered BIGINT NOT NULL,
            secret TEXT NOT NULL,
            old_secret TEXT,
            old_secret_until BIGINT,
            after_seq BIGINT NOT NULL,
            failing_since BIGINT,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE TABLE _lintel_webhook_deliveries (
            id TEXT PRIMARY KEY NOT NULL,
            webhook TEXT NOT NULL,
            seq BIGINT,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts TEXT NOT NULL,
            next_attempt_at BIGINT,
            job TEXT,
            created BIGINT NOT NULL
        );
        CREATE INDEX _lintel_webhook_deliveries_log ON _lintel_webhook_deliveries (webhook, created);
        CREATE UNIQUE INDEX _lintel_webhook_deliveries_event ON _lintel_webhook_deliveries (webhook, seq);
        CREATE TABLE _lintel_webhook_cursor (
            id INTEGER PRIMARY KEY NOT NULL,
            seq BIGINT NOT NULL
        );
        INSERT INTO _lintel_webhook_cursor (id, seq) VALUES (1, 0);";

/// The indexes of ordered delivery (system migration 11): a delivery by its job, the
/// deliveries of an ordered webhook waiting their turn (no job yet), in `seq` order,
/// and the pending deliveries that have a job (in flight or awaiting a retry).
pub const DELIVERY_INDEXES: &str = "CREATE INDEX _lintel_webhook_deliveries_job ON _lintel_webhook_deliveries (job);
        CREATE INDEX _lintel_webhook_deliveries_waiting ON _lintel_webhook_deliveries (webhook, seq) WHERE job IS NULL;
        CREATE INDEX _lintel_webhook_deliveries_sending ON _lintel_webhook_deliveries (webhook) WHERE status = 'pending' AND job IS NOT NULL;";
