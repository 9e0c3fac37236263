//! Logging and metrics set-up. Logs are JSON when stderr is not a terminal (or when
//! configured), with the request span's fields (request id, trace id) on every line.
//! Metrics go to the server's own Prometheus registry ([`Metrics`]), rendered at
//! `/metrics`.

use std::io::IsTerminal;
use std::sync::Arc;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Installs the log subscriber; later calls (tests start many servers) do nothing.
/// Lines are written by a background thread so a request never waits on stderr; keep
/// the returned guard alive until exit so the last lines are flushed.
pub fn init_logging(cfg: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
    };
    guard
}

/// One server's metrics: its own Prometheus registry, rendered at its `/metrics`.
///
/// No recorder is installed process-wide: every Lintel metric is recorded through
/// [`Metrics::scoped`] (or a handle made there), so two servers in one process (the
/// test suite starts hundreds) never count each other's requests, and each `/metrics`
/// shows exactly its own server's work. With one server per process, as in
/// production, this is the same as a global recorder.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// Runs `f` with this server's registry as the recorder of the `metrics` macros
    /// (on this thread, for the call only). Handles made inside (`counter!(..)`) keep
    /// recording into this registry wherever they are used afterwards.
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// The Prometheus text of this server's metrics.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

tokio::task_local! {
    /// The request id of the request this task is handling (for logs, audit rows and
    /// background work it starts).
    pub static CURRENT_REQUEST_ID: String;
}
