//! What can go wrong reading the event log, said without HTTP (the edge maps each
//! variant in `crate::error`; docs/errors.md lists the codes).

use crate::store::StoreError;

/// A failure reading events.
#[derive(Debug)]
pub enum EventsError {
    /// The position asked for is older than the log keeps (410 `events_purged`);
    /// `oldest` is the lowest `seq` still there.
    Purged { oldest: i64 },
    /// The store failed (503 or 500).
    Store(StoreError),
}

impl From<StoreError> for EventsError {
    fn from(e: StoreError) -> Self {
        EventsError::Store(e)
    }
}

impl std::fmt::Display for EventsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsError::Purged { oldest } => {
                write!(f, "events before seq {oldest} are purged")
            }
            EventsError::Store(e) => write!(f, "{e}"),
        }
    }
}
