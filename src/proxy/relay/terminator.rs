//! The relay's end of a session: expiry, revocation or shutdown, raced by every wait.

use std::pin::Pin;

use tokio::sync::watch;

use crate::proxy::registry::{Control, DropReason};

/// Ends the session on expiry, revocation or shutdown, even in the middle of a write.
pub(super) struct Terminator {
    kill: watch::Receiver<Control>,
    pub(super) deadline: tokio::time::Instant,
    /// One timer for the session's life, moved when the grant is extended: every wait in
    /// the relay races it, and making a new one per wait would cost a timer-wheel insert
    /// and remove per statement.
    expiry: Pin<Box<tokio::time::Sleep>>,
}

impl Terminator {
    pub(super) fn new(
        kill: watch::Receiver<Control>,
        deadline: tokio::time::Instant,
    ) -> Terminator {
        Terminator {
            kill,
            deadline,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    pub(super) async fn fired(&mut self) -> DropReason {
        loop {
            let control = self.kill.borrow_and_update().clone();
            match control {
                Control::Drop(reason) => return reason,
                Control::ExtendTo(end) => {
                    let extended = self.deadline.max(monotonic_deadline(end));
                    if extended != self.deadline {
                        self.deadline = extended;
                        self.expiry.as_mut().reset(extended);
                    }
                }
                Control::Run => {}
            }
            tokio::select! {
                _ = &mut self.expiry => return DropReason::Expired,
                changed = self.kill.changed() => if changed.is_err() {
                    // The registry is gone: the proxy is going away.
                    return DropReason::Shutdown;
                },
            }
        }
    }
}

/// A wall-clock end, counted on the monotonic clock from now.
pub fn monotonic_deadline(end: chrono::DateTime<chrono::Utc>) -> tokio::time::Instant {
    let remaining = (end - chrono::Utc::now())
        .to_std()
        .unwrap_or(std::time::Duration::ZERO);
    tokio::time::Instant::now() + remaining
}
