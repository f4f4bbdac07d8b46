//! Telling the engineer when access ends: a NOTICE at login, and one at each offset of
//! `[timings] warn_before` before the end. A NoticeResponse may come at any time, but the
//! relay forwards upstream bytes as they arrive, in chunks that can end inside a message
//! (a DataRow, a CopyData); a notice is therefore written only where the client's stream
//! is at a message boundary — between two messages of a chunk, or at once when nothing is
//! half sent — never inside one.

use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{monotonic_deadline, End, Relay};
use crate::proxy::registry::Control;

/// The warnings of one session: one timer, for the next warning (or, once all are given,
/// the end itself, to notice an extension that calls for warnings again).
pub(super) struct Warnings {
    request_id: String,
    /// Offsets before the end, longest first.
    offsets: Vec<Duration>,
    /// The wall-clock end the warnings speak of.
    ends_at: DateTime<Utc>,
    /// The same end on the monotonic clock.
    deadline: Instant,
    /// The next offset of `offsets` to warn at.
    next: usize,
    timer: Pin<Box<Sleep>>,
    /// When the timer goes off, while it runs.
    due: Option<Instant>,
    /// Watched for extensions (the terminator moves the deadline; this moves the warnings).
    control: watch::Receiver<Control>,
    /// Notices due and not yet written: they wait for a message boundary.
    pending: BytesMut,
}

impl Warnings {
    pub(super) fn new(
        request_id: &str,
        ends_at: DateTime<Utc>,
        offsets: &[Duration],
        deadline: Instant,
        control: watch::Receiver<Control>,
    ) -> Warnings {
        let mut warnings = Warnings {
            request_id: request_id.to_owned(),
            offsets: offsets.to_vec(),
            ends_at,
            deadline,
            next: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            due: None,
            control,
            pending: BytesMut::new(),
        };
        warnings.schedule(Instant::now());
        warnings
    }

    /// Whether the timer runs (the relay polls it only then).
    pub(super) fn armed(&self) -> bool {
        self.due.is_some()
    }

    pub(super) fn timer(&mut self) -> &mut Pin<Box<Sleep>> {
        &mut self.timer
    }

    /// Whether a notice waits for a message boundary.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(super) fn take_pending(&mut self) -> BytesMut {
        std::mem::take(&mut self.pending)
    }

    /// The timer went off: queues the warning due now, if any, and sets the timer for the
    /// next one.
    pub(super) fn fire(&mut self) {
        self.fire_at(Instant::now());
    }

    fn fire_at(&mut self, now: Instant) {
        let extended_to = match &*self.control.borrow() {
            Control::ExtendTo(end) => Some(*end),
            _ => None,
        };
        if let Some(end) = extended_to {
            if end > self.ends_at {
                self.ends_at = end;
                self.deadline = monotonic_deadline(end);
                self.next = 0;
                self.schedule(now);
                return;
            }
        }
        if let Some(offset) = self.offsets.get(self.next).copied() {
            if self
                .deadline
                .checked_sub(offset)
                .is_none_or(|due| due <= now)
            {
                self.next += 1;
                let remaining = self.deadline.saturating_duration_since(now);
                notice(
                    &mut self.pending,
                    &warning_text(&self.request_id, self.ends_at, remaining),
                );
            }
        }
        self.schedule(now);
    }

    /// Sets the timer for the next warning that still lies ahead, skipping offsets the
    /// remaining window is not longer than (login told the engineer those already).
    fn schedule(&mut self, now: Instant) {
        let remaining = self.deadline.saturating_duration_since(now);
        while self.offsets.get(self.next).is_some_and(|o| *o >= remaining) {
            self.next += 1;
        }
        let at = match self.offsets.get(self.next) {
            Some(offset) => self.deadline.checked_sub(*offset).unwrap_or(now),
            // All given: wake at the end, in case an extension moved it.
            None if self.deadline > now => self.deadline,
            None => {
                self.due = None;
                return;
            }
        };
        self.timer.as_mut().reset(at);
        self.due = Some(at);
    }
}

impl Relay {
    /// The warning timer went off: the notice goes out now if the client's stream is at a
    /// message boundary, else with the next upstream bytes, at the first boundary in them.
    pub(super) async fn on_warning(&mut self) -> Result<(), End> {
        self.warnings.fire();
        // Unless a message too large to hold back is streaming, the client is between two
        // messages: what came from upstream was written up to the start of one not yet
        // whole, which is held back (`torn`) or rewound to its first byte.
        if self.warnings.has_pending() && !self.client_mid_message {
            let notice = self.warnings.take_pending();
            self.forward_to_client(&notice, false).await?;
        }
        Ok(())
    }

    /// Puts the waiting notice at the latest message boundary of the upstream bytes about
    /// to be forwarded (`held`: the buffer was cut where a held-back message begins); with
    /// none in them (one message spans the whole read), it waits for the next read.
    pub(super) fn insert_notice(
        &mut self,
        held: bool,
        rewrites: &mut Vec<(std::ops::Range<usize>, Vec<u8>)>,
    ) {
        let boundary = if held {
            Some(self.ubuf.len())
        } else {
            self.scanner.last_boundary()
        };
        // Rewrites replace whole messages, all before the latest boundary: order is kept.
        if let Some(at) = boundary {
            rewrites.push((at..at, self.warnings.take_pending().to_vec()));
        }
    }
}

/// The notice a session gets at login.
pub(crate) fn login_notice(out: &mut BytesMut, request_id: &str, ends_at: DateTime<Utc>) {
    let remaining = (ends_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    let text = format!(
        "lockbox: access for request {request_id} ends at {} (in {})",
        utc(ends_at),
        span(remaining)
    );
    notice(out, &text);
}

fn warning_text(request_id: &str, ends_at: DateTime<Utc>, remaining: Duration) -> String {
    format!(
        "lockbox: access for request {request_id} ends in {}, at {}; this session will then be closed (more time: `lockbox request extend {request_id}`)",
        span(remaining),
        utc(ends_at)
    )
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A remaining time in whole seconds, rounded up (a timer that fires on time at 10m
/// before the end says "10m", not "9m 59s").
fn span(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Appends a NoticeResponse (severity NOTICE, SQLSTATE 00000) with `text`.
pub(super) fn notice(out: &mut BytesMut, text: &str) {
    // A NUL would end the field early; the texts here never hold one.
    let text = text.replace('\0', "");
    let fields: [(u8, &str); 4] = [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', &text),
    ];
    let body_len: usize = fields.iter().map(|(_, v)| 1 + v.len() + 1).sum::<usize>() + 1;
    let Ok(len) = i32::try_from(body_len + 4) else {
        return;
    };
    out.put_u8(b'N');
    out.put_i32(len);
    for (code, value) in fields {
        out.put_u8(code);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(bytes: &[u8]) -> Vec<(char, String)> {
        assert_eq!(bytes[0], b'N');
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len(), "one whole message");
        bytes[5..bytes.len() - 1]
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| {
                (
                    char::from(f[0]),
                    String::from_utf8_lossy(&f[1..]).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_notice_is_one_well_formed_message() {
        let mut out = BytesMut::new();
        notice(&mut out, "ends soon");
        assert_eq!(
            fields(&out),
            [
                ('S', "NOTICE".into()),
                ('V', "NOTICE".into()),
                ('C', "00000".into()),
                ('M', "ends soon".into())
            ]
        );
    }

    #[test]
    fn remaining_time_is_rounded_up_to_the_second() {
        assert_eq!(span(Duration::from_millis(599_998)), "10m");
        assert_eq!(span(Duration::from_secs(61)), "1m 1s");
        let at = DateTime::parse_from_rfc3339("2026-11-30T20:00:00.250Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            warning_text("req-1", at, Duration::from_secs(60)),
            "lockbox: access for request req-1 ends in 1m, at 2026-11-30 20:00:00 UTC; this session will then be closed (more time: `lockbox request extend req-1`)"
        );
    }

    fn due(w: &Warnings) -> Instant {
        w.due.expect("armed")
    }

    #[tokio::test]
    async fn warnings_come_at_each_offset_that_fits_the_window() {
        let (_tx, rx) = watch::channel(Control::Run);
        let ends_at = Utc::now() + chrono::Duration::minutes(5);
        let deadline = Instant::now() + Duration::from_secs(300);
        let offsets = [600, 60, 10].map(Duration::from_secs);
        let mut w = Warnings::new("req-1", ends_at, &offsets, deadline, rx);
        // 10m does not fit a 5m window: the first warning is the 1m one.
        assert_eq!(due(&w), deadline - Duration::from_secs(60));
        w.fire_at(due(&w));
        let first = fields(&w.take_pending());
        assert!(first[3].1.contains("ends in 1m,"), "{first:?}");
        assert_eq!(due(&w), deadline - Duration::from_secs(10));
        w.fire_at(due(&w));
        assert!(fields(&w.take_pending())[3].1.contains("ends in 10s,"));
        // None left: the timer waits for the end, then stops.
        assert_eq!(due(&w), deadline);
        w.fire_at(deadline);
        assert!(!w.has_pending());
        assert!(!w.armed());
    }

    #[tokio::test]
    async fn an_extension_brings_the_warnings_back() {
        let (tx, rx) = watch::channel(Control::Run);
        let ends_at = Utc::now() + chrono::Duration::seconds(30);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut w = Warnings::new("req-1", ends_at, &[Duration::from_secs(10)], deadline, rx);
        assert_eq!(due(&w), deadline - Duration::from_secs(10));
        let _ = tx.send(Control::ExtendTo(ends_at + chrono::Duration::minutes(1)));
        w.fire_at(due(&w));
        assert!(!w.has_pending(), "no warning for the old end");
        assert!(
            due(&w) > deadline + Duration::from_secs(40),
            "10s before the new end"
        );
        w.fire_at(due(&w));
        assert!(fields(&w.take_pending())[3].1.contains("ends in 10s,"));
    }
}
