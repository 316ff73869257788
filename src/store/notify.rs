//! Wakes long-polling `GET ?wait=` requests when a verification completes.

use tokio::sync::broadcast;

use super::VerificationId;

/// Completed-verification announcements, for waiters in this process.
///
/// A waiter subscribes *before* reading the store, so a completion between the read and the
/// wait is not missed; a lagging receiver re-reads the store.
#[derive(Clone, Debug)]
pub struct Completions(broadcast::Sender<VerificationId>);

/// Announcements buffered per receiver before it lags (and re-reads the store).
const COMPLETIONS_BUFFER: usize = 1024;

impl Completions {
    pub fn new() -> Completions {
        Completions(broadcast::channel(COMPLETIONS_BUFFER).0)
    }

    /// Announces that `id` is completed (no-op without waiters).
    pub fn announce(&self, id: &VerificationId) {
        let _ = self.0.send(id.clone());
    }

    /// A receiver of later announcements.
    pub fn subscribe(&self) -> broadcast::Receiver<VerificationId> {
        self.0.subscribe()
    }
}

impl Default for Completions {
    fn default() -> Self {
        Completions::new()
    }
}
