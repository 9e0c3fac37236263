//! The tables of the job queue and its schedules (system migration 9), the same text
//! for both dialects: times are epoch milliseconds, JSON is text. The queue's
//! statements are built by `crate::jobs::store`.

/// Jobs and schedules.
pub const TABLES: &str = "CREATE TABLE _lintel_jobs (
            id TEXT PRIMARY KEY NOT NULL,
            kind TEXT NOT NULL,
            queue TEXT NOT NULL,
            payload TEXT,
            priority BIGINT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL,
            max_attempts BIGINT NOT NULL,
            run_at BIGINT NOT NULL,
            unique_key TEXT,
            timeout_ms BIGINT NOT NULL,
            lease_id TEXT,
            lease_ms BIGINT,
            lease_expires BIGINT,
            last_error TEXT,
            progress TEXT,
            result TEXT,
            owner TEXT,
            schedule_id TEXT,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL,
            started BIGINT,
            finished BIGINT
        );
        CREATE INDEX _lintel_jobs_ready ON _lintel_jobs (priority DESC, run_at, id)
            WHERE status IN ('queued', 'retrying');
        CREATE INDEX _lintel_jobs_leases ON _lintel_jobs (lease_expires) WHERE status = 'running';
        CREATE INDEX _lintel_jobs_listing ON _lintel_jobs (status, created);
        CREATE INDEX _lintel_jobs_owner ON _lintel_jobs (owner, created) WHERE owner IS NOT NULL;
        CREATE UNIQUE INDEX _lintel_jobs_unique ON _lintel_jobs (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('queued', 'retrying', 'running');
        CREATE TABLE _lintel_schedules (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL UNIQUE,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            job TEXT NOT NULL,
            paused BIGINT NOT NULL,
            next_run BIGINT NOT NULL,
            last_run BIGINT,
            last_job TEXT,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE INDEX _lintel_schedules_due ON _lintel_schedules (next_run) WHERE paused = 0;";
