//! The relay's end of a session: expiry, revocation or shutdown, checked before or raced
//! by every wait.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use crate::proxy::registry::{Control, DropReason};

/// Ends the session on expiry, revocation or shutdown, even in the middle of a write.
pub(super) struct Terminator {
    kill: watch::Receiver<Control>,
    /// The drop seen last, kept: [`Terminator::ended`] reads the control only when it
    /// changed, and a drop must stay seen.
    dropped: Option<DropReason>,
    pub(super) deadline: tokio::time::Instant,
    /// One timer for the session's life, moved when the grant is extended: the waits that
    /// race it share it, where a new one per wait would cost a timer-wheel insert and
    /// remove per statement.
    expiry: Pin<Box<tokio::time::Sleep>>,
    /// The wait for the next control, kept across [`Self::fired`]'s calls for the same
    /// reason: a `changed()` made per call would join the watch's list of waiters and leave
    /// it again (two lock round trips and a waker clone) on every loop of the relay. Made
    /// again only after a control arrived, once it has been read.
    next_control: Option<ControlWait>,
}

/// Resolves when the control changes (true) or the registry is gone (false).
type ControlWait = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A wait on a receiver of its own, which starts from what `kill` has seen.
fn wait_for_control(kill: &watch::Receiver<Control>) -> ControlWait {
    let mut kill = kill.clone();
    Box::pin(async move { kill.changed().await.is_ok() })
}

impl Terminator {
    pub(super) fn new(
        kill: watch::Receiver<Control>,
        deadline: tokio::time::Instant,
    ) -> Terminator {
        let mut terminator = Terminator {
            kill,
            dropped: None,
            deadline,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
            next_control: None,
        };
        // A receiver subscribed after a drop or an extension holds it as already seen,
        // which `ended` alone would not read.
        terminator.apply_control();
        terminator
    }

    /// Why the session must end, if it must already: the current control (a drop, or an
    /// extension, which moves the timer) and the deadline, read without waiting.
    ///
    /// Waits that are usually over at once (a write to a socket with room, a flush, an
    /// audit write that is already done) check this first and then race [`Self::fired`]
    /// only behind their own future: `fired` registers with the watch and the timer
    /// whenever it is polled, which costs more than the write it would guard.
    pub(super) fn ended(&mut self) -> Option<DropReason> {
        if let Some(reason) = &self.dropped {
            return Some(reason.clone());
        }
        match self.kill.has_changed() {
            // An extension is applied once, not at every write after it.
            Ok(true) => {
                if let Some(reason) = self.apply_control() {
                    return Some(reason);
                }
            }
            Ok(false) => {}
            // The registry is gone: the proxy is going away. A drop sent before it went
            // is still unread, and names the real reason.
            Err(_) => return Some(self.apply_control().unwrap_or(DropReason::Shutdown)),
        }
        (tokio::time::Instant::now() >= self.deadline).then_some(DropReason::Expired)
    }

    pub(super) async fn fired(&mut self) -> DropReason {
        loop {
            if let Some(reason) = &self.dropped {
                return reason.clone();
            }
            // Read only when it changed (or the registry is gone: a drop sent before it
            // went names the real reason), and before the wait is made, which starts from
            // what has been read.
            if self.kill.has_changed().unwrap_or(true) {
                if let Some(reason) = self.apply_control() {
                    return reason;
                }
            }
            let next_control = self
                .next_control
                .get_or_insert_with(|| wait_for_control(&self.kill));
            tokio::select! {
                _ = &mut self.expiry => return DropReason::Expired,
                alive = next_control => {
                    self.next_control = None;
                    if !alive {
                        // The registry is gone: the proxy is going away.
                        return DropReason::Shutdown;
                    }
                }
            }
        }
    }

    /// Marks the current control seen and acts on it: a drop is returned, an extension
    /// moves the deadline and its timer.
    fn apply_control(&mut self) -> Option<DropReason> {
        let control = self.kill.borrow_and_update().clone();
        match control {
            Control::Drop(reason) => {
                self.dropped = Some(reason.clone());
                Some(reason)
            }
            Control::ExtendTo(end) => {
                let extended = self.deadline.max(monotonic_deadline(end));
                if extended != self.deadline {
                    self.deadline = extended;
                    self.expiry.as_mut().reset(extended);
                }
                None
            }
            Control::Run => None,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn terminator(deadline: Instant) -> (watch::Sender<Control>, Terminator) {
        let (control, kill) = watch::channel(Control::Run);
        (control, Terminator::new(kill, deadline))
    }

    #[tokio::test]
    async fn ended_reports_a_drop_every_time_it_is_asked() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        assert_eq!(term.ended(), None);
        control.send_replace(Control::Drop(DropReason::Revoked));
        assert_eq!(term.ended(), Some(DropReason::Revoked));
        // Seen once is not forgotten: a later wait must not run either.
        assert_eq!(term.ended(), Some(DropReason::Revoked));
        assert_eq!(term.fired().await, DropReason::Revoked);
    }

    #[tokio::test]
    async fn ended_reports_a_drop_sent_before_the_session_subscribed() {
        let (control, _first) = watch::channel(Control::Run);
        control.send_replace(Control::Drop(DropReason::Revoked));
        // `subscribe` marks the current value seen: only reading it finds the drop.
        let mut term = Terminator::new(control.subscribe(), Instant::now() + HOUR);
        assert_eq!(term.ended(), Some(DropReason::Revoked));
    }

    #[tokio::test]
    async fn an_extension_is_applied_once() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 2 * HOUR));
        assert_eq!(term.ended(), None);
        let extended = term.deadline;
        assert!(extended > Instant::now() + HOUR);
        // Moved back by hand: a second reading of the same extension would undo this.
        term.deadline = Instant::now() + HOUR;
        assert_eq!(term.ended(), None);
        assert!(term.deadline < extended);
    }

    #[tokio::test]
    async fn ended_reads_the_clock_rather_than_waiting_for_the_timer() {
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        let (_control, mut term) = terminator(past.unwrap_or_else(Instant::now));
        // The timer was never polled, so it has not fired; the deadline is still over.
        assert_eq!(term.ended(), Some(DropReason::Expired));
    }

    #[tokio::test]
    async fn ended_applies_an_extension_before_judging_the_deadline() {
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        let (control, mut term) = terminator(past.unwrap_or_else(Instant::now));
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + HOUR));
        assert_eq!(term.ended(), None);
        assert!(term.deadline > Instant::now() + HOUR / 2);
    }

    #[tokio::test]
    async fn every_extension_is_applied_and_none_shortens_the_session() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 2 * HOUR));
        assert_eq!(term.ended(), None);
        let first = term.deadline;
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 3 * HOUR));
        assert_eq!(term.ended(), None);
        assert!(term.deadline > first + HOUR / 2);
        // An extension that arrives late with an earlier end does not take time back.
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 2 * HOUR));
        assert_eq!(term.ended(), None);
        assert!(term.deadline > first + HOUR / 2);
    }

    #[tokio::test]
    async fn an_extension_seen_before_the_relay_started_still_counts() {
        let (control, mut seen) = watch::channel(Control::Run);
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 2 * HOUR));
        // Marked seen (as a login step might) before the terminator is made.
        let _ = seen.borrow_and_update();
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        let mut term = Terminator::new(seen, past.unwrap_or_else(Instant::now));
        assert_eq!(term.ended(), None);
        assert!(term.deadline > Instant::now() + HOUR);
    }

    #[tokio::test]
    async fn a_drop_sent_just_before_the_registry_went_keeps_its_reason() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        control.send_replace(Control::Drop(DropReason::Revoked));
        drop(control);
        assert_eq!(term.ended(), Some(DropReason::Revoked));
    }

    /// `fired` is raced in every loop of the relay and mostly dropped unfinished; its wait
    /// for the control outlives each call.
    #[tokio::test]
    async fn waits_dropped_unfinished_still_see_every_control_after_them() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        assert!(futures::poll!(std::pin::pin!(term.fired())).is_pending());
        control.send_replace(Control::ExtendTo(chrono::Utc::now() + 3 * HOUR));
        // The kept wait ends with the extension; the call reads it and waits again.
        assert!(futures::poll!(std::pin::pin!(term.fired())).is_pending());
        assert!(term.deadline > Instant::now() + 2 * HOUR);
        assert!(futures::poll!(std::pin::pin!(term.fired())).is_pending());
        control.send_replace(Control::Drop(DropReason::Revoked));
        assert_eq!(term.fired().await, DropReason::Revoked);
    }

    #[tokio::test]
    async fn a_wait_kept_from_before_the_registry_went_reports_shutdown() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        assert!(futures::poll!(std::pin::pin!(term.fired())).is_pending());
        drop(control);
        assert_eq!(term.fired().await, DropReason::Shutdown);
    }

    #[tokio::test]
    async fn ended_reports_shutdown_once_the_registry_is_gone() {
        let (control, mut term) = terminator(Instant::now() + HOUR);
        drop(control);
        assert_eq!(term.ended(), Some(DropReason::Shutdown));
        assert_eq!(term.fired().await, DropReason::Shutdown);
    }
}
