//! Background tasks that outlive the request that started them (audit writes, mail,
//! "last used" stamps, writes that must finish even if their request is dropped).
//!
//! [`Tasks::spawn`] carries the caller's tracing span and request id into the task, so
//! its log lines and audit rows name the request, and counts the task, so shutdown can
//! wait for every one of them ([`Tasks::wait_idle`]) before the store closes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

/// Counts running background tasks; cheap to clone (clones share the count).
#[derive(Clone, Default)]
pub struct Tasks(Arc<Inner>);

/// Held by a running task; dropping it (the task finished, panicked or was aborted)
/// takes the task off the count.
struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut` on the runtime inside the current span and request id, counted
    /// until it ends.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.0.clone());
        let span = tracing::Span::current();
        let request_id = crate::telemetry::CURRENT_REQUEST_ID
            .try_with(|id| id.clone())
            .ok();
        tokio::spawn(async move {
            let _running = running;
            match request_id {
                Some(id) => {
                    crate::telemetry::CURRENT_REQUEST_ID
                        .scope(id, fut.instrument(span))
                        .await
                }
                None => fut.instrument(span).await,
            }
        })
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Waits until no task runs, at most `limit`; returns how many were still running.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                // Registered before the check, so a task ending in between still wakes us.
                let idle = self.0.idle.notified();
                if self.running() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_running_tasks_and_carries_the_request_id() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let seen = crate::telemetry::CURRENT_REQUEST_ID.sync_scope("req-123".to_owned(), || {
            tasks.spawn(async move {
                let _ = rx.await;
                crate::telemetry::CURRENT_REQUEST_ID.try_with(|id| id.clone())
            })
        });
        assert_eq!(tasks.running(), 1);
        assert_eq!(
            tasks.wait_idle(Duration::from_millis(50)).await,
            1,
            "bounded"
        );
        let _ = tx.send(());
        assert_eq!(tasks.wait_idle(Duration::from_secs(5)).await, 0);
        assert_eq!(
            seen.await.ok().and_then(Result::ok).as_deref(),
            Some("req-123")
        );
        // A panicking or aborted task is taken off the count too.
        let h = tasks.spawn(std::future::pending::<()>());
        h.abort();
        let _ = tasks.spawn(async { panic!("boom") }).await;
        assert_eq!(tasks.wait_idle(Duration::from_secs(5)).await, 0);
    }
}
