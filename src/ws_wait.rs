//! Waiting for a condition another task signals with a `Notify`, without losing a wake-up, and counting
//! the waiters so the signalling side notifies (or does work) only while someone waits. Used by the
//! supervised WebSocket's `readable` and by the `on_connect` handshake's.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts a waiter for as long as it waits (cancellation included).
pub struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once `ready()` holds. The notification is armed before each check, so a `notify_waiters`
/// between the check and the wait is not lost.
pub async fn until(notify: &Notify, ready: impl Fn() -> bool) {
    loop {
        let n = notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if ready() {
            return;
        }
        n.await;
    }
}
