//! What the WebSocket endpoints (realtime subscriptions, Yjs documents) share: sending
//! a queue's messages with one flush for all that are already waiting.

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;

/// Messages sent per flush at most (the rest wait for the next round).
const BATCH: usize = 64;

/// Sends `first` and whatever `rx` already holds (up to a batch), each turned into a
/// message by `to_msg`, then flushes once; false when the socket is gone.
pub async fn send_queued<T>(
    sink: &mut SplitSink<WebSocket, Message>,
    first: T,
    rx: &mut mpsc::Receiver<T>,
    to_msg: impl Fn(T) -> Message,
) -> bool {
    if sink.feed(to_msg(first)).await.is_err() {
        return false;
    }
    for _ in 0..BATCH {
        let Ok(more) = rx.try_recv() else { break };
        if sink.feed(to_msg(more)).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}
