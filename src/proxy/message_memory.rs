//! The memory the proxy's sessions hold, together, for client messages larger than a read
//! buffer (`[proxy] max_message_memory`).
//!
//! A session takes room for a large message at once, from its declared size, up to
//! `proxy.max_message_size`; alone that bound lets `max_connections` clients each hold that
//! much by sending the start of such a message and never the rest (an attack review drove
//! the proxy from 55 MB to 794 MB with 12 sessions, 64 GiB in reach with the defaults). So
//! a message past what a session's buffer keeps anyway is given room only from a budget all
//! sessions share; a message the budget cannot take ends its session with SQLSTATE 53200
//! (out of memory, as PostgreSQL answers an allocation it cannot make) and a message that
//! names the setting, while every other session goes on.
//!
//! The message at the front of the buffer is not the only one that grows it: a Bind waits
//! there, whole, for the Execute behind it (`planning.rs`), and that Execute's bytes grow
//! the buffer as they come (a second review held 163 MB against an 8 MiB budget so). So
//! after every read the share also covers the bytes the buffer holds, whatever they are.
//! Bytes, not capacity: a buffer grows by doubling, and the pages it has not filled cost
//! nothing resident, while counting them refused a message that fit the budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

/// What a session's buffer may hold without a share of the budget: a buffer grown past it
/// goes back to its usual size once emptied (`buffers::shrink_if_oversized`).
pub(crate) const UNSHARED: usize = 4 * super::relay::BUFFER_CAPACITY;

/// What a session may keep for its prepared statements and portals without a share of the
/// budget: an application's statements, a few kilobytes each, fit many times over.
pub(crate) const KEPT_UNSHARED: usize = 1 << 20;

/// The bytes every session's share adds up to.
#[derive(Debug, Default)]
pub(crate) struct MessageMemory {
    held: AtomicUsize,
}

impl MessageMemory {
    /// Bytes held by all sessions' shares.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more if the total stays within `limit`.
    fn try_take(&self, bytes: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One session's share of [`MessageMemory`], given back when its buffer shrinks back or
/// the session ends.
#[derive(Debug, Default)]
pub(crate) struct MessageShare {
    budget: Option<(Arc<MessageMemory>, usize)>,
    bytes: usize,
}

/// What asked the shared budget for room it did not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker {
    /// One message, by its type byte.
    Message(u8),
    /// What the client sent after a waiting message, which outgrew the buffer.
    Buffer,
    /// The prepared statements and portals the session keeps (`Statements::retained`).
    Kept,
}

/// A message the shared budget had no room for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRoom {
    pub asker: Asker,
    /// The bytes asked for: the message's declared size (type byte and length included),
    /// the buffer's, or what the session's statements and portals hold.
    pub size: usize,
    /// `proxy.max_message_memory`.
    pub limit: usize,
}

impl NoRoom {
    /// What the session's end record says.
    pub fn describe(&self) -> String {
        let what = match self.asker {
            Asker::Message(tag) => format!("{} message", super::oversize::message_name(tag)),
            Asker::Buffer => "client messages".to_owned(),
            Asker::Kept => {
                return format!(
                    "prepared statements and portals holding {} bytes refused: the proxy's \
                     sessions already hold what proxy.max_message_memory ({} bytes) allows \
                     for large client messages and for what sessions keep past {} bytes each",
                    self.size, self.limit, KEPT_UNSHARED
                )
            }
        };
        format!(
            "{what} of {} bytes refused: the proxy's sessions already hold what \
             proxy.max_message_memory ({} bytes) allows for large client messages",
            self.size, self.limit
        )
    }

    /// What the client's FATAL says.
    pub fn fatal_message(&self) -> String {
        format!(
            "lockbox: {}; the session is ended, try again later",
            self.describe()
        )
    }
}

impl MessageShare {
    /// A share of `memory`, which holds at most `limit` bytes for all sessions.
    pub(crate) fn of(memory: Arc<MessageMemory>, limit: usize) -> Self {
        MessageShare {
            budget: Some((memory, limit)),
            bytes: 0,
        }
    }

    /// Bytes this session holds of the budget.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes room in `buf` for the rest of the message it starts with (see
    /// `wire::reserve_rest_of_frame`), taking a share of the budget first for a message past
    /// [`UNSHARED`]. A message over `max_message` gets nothing here: framing refuses it.
    pub(crate) fn reserve(&mut self, buf: &mut BytesMut, max_message: usize) -> Result<(), NoRoom> {
        let Some(size) = crate::wire::declared_frame_size(buf) else {
            return Ok(());
        };
        if size <= max_message {
            self.take_up_to(size, Asker::Message(buf[0]))?;
        }
        crate::wire::reserve_rest_of_frame(buf, max_message);
        Ok(())
    }

    /// After a read: the share covers the bytes the buffer holds, whatever message they
    /// belong to.
    pub(crate) fn cover(&mut self, buf: &BytesMut) -> Result<(), NoRoom> {
        self.take_up_to(buf.len(), Asker::Buffer)
    }

    /// Makes the share `bytes`, if that is past [`UNSHARED`] and more than it holds.
    fn take_up_to(&mut self, bytes: usize, asker: Asker) -> Result<(), NoRoom> {
        if bytes <= UNSHARED || bytes <= self.bytes {
            return Ok(());
        }
        self.take(bytes, asker)
    }

    fn take(&mut self, bytes: usize, asker: Asker) -> Result<(), NoRoom> {
        if let Some((memory, limit)) = &self.budget {
            if !memory.try_take(bytes - self.bytes, *limit) {
                return Err(NoRoom {
                    asker,
                    size: bytes,
                    limit: *limit,
                });
            }
        }
        self.bytes = bytes;
        Ok(())
    }

    /// For what a session keeps (its prepared statements and portals, `kept` bytes): the
    /// share becomes what is past [`KEPT_UNSHARED`], taken from the budget or given back
    /// to it. Refused, the share stays as it was.
    pub(crate) fn hold_kept(&mut self, kept: usize) -> Result<(), NoRoom> {
        let wanted = kept.saturating_sub(KEPT_UNSHARED);
        if wanted > self.bytes {
            return self.take(wanted, Asker::Kept).map_err(|mut no_room| {
                no_room.size = kept;
                no_room
            });
        }
        self.give_back_kept(kept);
        Ok(())
    }

    /// [`Self::hold_kept`] when what the session keeps can only have shrunk: gives back,
    /// never takes.
    pub(crate) fn give_back_kept(&mut self, kept: usize) {
        let wanted = kept.saturating_sub(KEPT_UNSHARED);
        if wanted < self.bytes {
            if let Some((memory, _)) = &self.budget {
                memory.give_back(self.bytes - wanted);
            }
            self.bytes = wanted;
        }
    }

    /// The buffer went back to its usual size: the share is given back.
    pub(crate) fn release(&mut self) {
        if let Some((memory, _)) = &self.budget {
            memory.give_back(self.bytes);
        }
        self.bytes = 0;
    }
}

impl Drop for MessageShare {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u8, size: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&i32::try_from(size - 1).expect("size").to_be_bytes());
        buf
    }

    const MAX_MESSAGE: usize = 64 << 20;

    #[test]
    fn large_messages_share_one_budget_and_give_it_back() {
        let memory = Arc::new(MessageMemory::default());
        let limit = 3 << 20;
        let mut first = MessageShare::of(memory.clone(), limit);
        let mut second = MessageShare::of(memory.clone(), limit);
        let mut buf = header(b'Q', 2 << 20);
        first.reserve(&mut buf, MAX_MESSAGE).expect("room");
        assert!(buf.capacity() >= 2 << 20, "room for the whole message");
        assert_eq!(memory.held(), 2 << 20);
        // A second session's message does not fit beside it: refused, nothing reserved.
        let mut other = header(b'd', 2 << 20);
        let refused = second
            .reserve(&mut other, MAX_MESSAGE)
            .expect_err("no room");
        assert_eq!(
            refused,
            NoRoom {
                asker: Asker::Message(b'd'),
                size: 2 << 20,
                limit
            }
        );
        assert!(other.capacity() < 1 << 20);
        assert_eq!(memory.held(), 2 << 20);
        // Reserving again for the same message takes nothing more.
        first.reserve(&mut buf, MAX_MESSAGE).expect("room");
        assert_eq!(memory.held(), 2 << 20);
        first.release();
        assert_eq!(memory.held(), 0);
        second.reserve(&mut other, MAX_MESSAGE).expect("room now");
        assert_eq!(memory.held(), 2 << 20);
        drop(second);
        assert_eq!(memory.held(), 0, "a session's end gives its share back");
    }

    #[test]
    fn what_a_buffer_keeps_anyway_and_what_framing_refuses_take_no_share() {
        let memory = Arc::new(MessageMemory::default());
        let mut share = MessageShare::of(memory.clone(), 1 << 20);
        let mut small = header(b'Q', UNSHARED);
        share.reserve(&mut small, MAX_MESSAGE).expect("room");
        let mut oversized = header(b'Q', MAX_MESSAGE + 1);
        share
            .reserve(&mut oversized, MAX_MESSAGE)
            .expect("left to framing");
        let mut partial_header = BytesMut::from(&b"Q\0\0"[..]);
        share
            .reserve(&mut partial_header, MAX_MESSAGE)
            .expect("nothing to size");
        assert_eq!((memory.held(), share.bytes()), (0, 0));
    }

    /// A buffer grown by bytes behind a whole message that waits (a Bind for its Execute)
    /// is covered after the read that grew it.
    #[test]
    fn a_buffer_grown_behind_a_waiting_message_is_covered_after_the_read() {
        let memory = Arc::new(MessageMemory::default());
        let limit = 3 << 20;
        let mut holder = MessageShare::of(memory.clone(), limit);
        let grown = BytesMut::from(&vec![b'x'; 2 << 20][..]);
        holder.cover(&grown).expect("room");
        assert_eq!(memory.held(), 2 << 20);
        let mut other = MessageShare::of(memory.clone(), limit);
        let refused = other.cover(&grown).expect_err("no room beside it");
        assert_eq!(refused.asker, Asker::Buffer);
        assert!(
            refused.describe().starts_with("client messages of "),
            "{}",
            refused.describe()
        );
        // What a buffer keeps anyway is not counted.
        other
            .cover(&BytesMut::from(&vec![b'x'; UNSHARED][..]))
            .expect("unshared");
        // Room the buffer has but does not fill costs nothing resident.
        other
            .cover(&BytesMut::with_capacity(2 << 20))
            .expect("capacity alone");
        drop(holder);
        assert_eq!(memory.held(), 0);
    }

    /// What sessions keep (statements, portals) takes a share past what each may keep
    /// without one, and gives it back as it shrinks; refused, the share stays as it was.
    #[test]
    fn what_sessions_keep_takes_a_share_past_its_allowance_and_gives_it_back() {
        let memory = Arc::new(MessageMemory::default());
        let limit = 3 << 20;
        let mut first = MessageShare::of(memory.clone(), limit);
        first
            .hold_kept(KEPT_UNSHARED)
            .expect("within the allowance");
        assert_eq!(memory.held(), 0);
        first.hold_kept(KEPT_UNSHARED + (2 << 20)).expect("room");
        assert_eq!(memory.held(), 2 << 20);
        let mut second = MessageShare::of(memory.clone(), limit);
        let refused = second
            .hold_kept(KEPT_UNSHARED + (2 << 20))
            .expect_err("no room beside it");
        assert_eq!(refused.asker, Asker::Kept);
        assert_eq!(refused.size, KEPT_UNSHARED + (2 << 20));
        assert!(
            refused
                .describe()
                .starts_with("prepared statements and portals holding "),
            "{}",
            refused.describe()
        );
        assert_eq!((memory.held(), second.bytes()), (2 << 20, 0));
        // Shrinking gives back what is no longer kept.
        first.hold_kept(KEPT_UNSHARED + (1 << 20)).expect("smaller");
        assert_eq!(memory.held(), 1 << 20);
        second
            .hold_kept(KEPT_UNSHARED + (2 << 20))
            .expect("room now");
        assert_eq!(memory.held(), 3 << 20);
        first.give_back_kept(KEPT_UNSHARED + (2 << 20));
        assert_eq!(memory.held(), 3 << 20, "giving back never takes");
        first.give_back_kept(0);
        drop(second);
        assert_eq!(memory.held(), 0);
    }
}
