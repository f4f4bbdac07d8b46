//! A journal frame on disk: a header (magic, payload length, the run's id, where the
//! payload belongs in the trail, a checksum over both) and the payload, the exact bytes
//! appended to the trail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::Frame;

pub(super) const MAGIC: [u8; 4] = *b"LBJ2";
const CHECKSUM_LEN: usize = 16;
/// magic, payload length, the run's id, the five fields of [`Frame`], checksum.
pub(super) const HEADER_LEN: usize = 4 + 4 + 8 + 5 * 8 + CHECKSUM_LEN;

/// Appends the frame to `buf`.
pub(super) fn encode(buf: &mut Vec<u8>, run_id: u64, frame: &Frame, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&run_id.to_le_bytes());
    for field in [
        frame.file_first_seq,
        frame.trail_offset,
        frame.trail_len,
        frame.first_seq,
        frame.last_seq,
    ] {
        buf.extend_from_slice(&field.to_le_bytes());
    }
    let checksum = checksum(&buf[start..start + HEADER_LEN - CHECKSUM_LEN], payload);
    buf.extend_from_slice(&checksum);
    buf.extend_from_slice(payload);
}

fn checksum(header: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(header)
        .chain_update(payload)
        .finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// A frame read back, with its bytes (`None`: a frame without bytes, see
/// [`Journal::record`]).
#[derive(Debug)]
pub(super) struct ReadFrame {
    pub(super) run_id: u64,
    pub(super) frame: Frame,
    pub(super) payload: Option<Vec<u8>>,
}

/// The frames from `start` on, in order, up to the first that is not whole (a torn write,
/// or the end of what was written).
pub(super) fn read_frames(
    file: &File,
    start: u64,
    end: u64,
    out: &mut Vec<ReadFrame>,
) -> io::Result<()> {
    let mut at = start;
    let mut header = [0u8; HEADER_LEN];
    while at + HEADER_LEN as u64 <= end {
        match file.read_exact_at(&mut header, at) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        let Some((run_id, frame, payload_len)) = decode_header(&header) else {
            return Ok(());
        };
        let payload_end = at + (HEADER_LEN + payload_len) as u64;
        if payload_end > end || (payload_len != 0 && payload_len as u64 != frame.trail_len) {
            return Ok(());
        }
        let mut payload = vec![0u8; payload_len];
        match file.read_exact_at(&mut payload, at + HEADER_LEN as u64) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        if checksum(&header[..HEADER_LEN - CHECKSUM_LEN], &payload)
            != header[HEADER_LEN - CHECKSUM_LEN..]
        {
            return Ok(());
        }
        out.push(ReadFrame {
            run_id,
            frame,
            payload: (payload_len > 0).then_some(payload),
        });
        at = payload_end;
    }
    Ok(())
}

pub(super) fn decode_header(header: &[u8; HEADER_LEN]) -> Option<(u64, Frame, usize)> {
    if header[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| {
        header
            .get(i..i + 4)?
            .try_into()
            .ok()
            .map(u32::from_le_bytes)
    };
    let u64_at = |i: usize| {
        header
            .get(i..i + 8)?
            .try_into()
            .ok()
            .map(u64::from_le_bytes)
    };
    let frame = Frame {
        file_first_seq: u64_at(16)?,
        trail_offset: u64_at(24)?,
        trail_len: u64_at(32)?,
        first_seq: u64_at(40)?,
        last_seq: u64_at(48)?,
    };
    // Whatever a checksum admits (it is not a secret), no arithmetic on these overflows.
    // A frame of no record (`last_seq` one before `first_seq`) anchors an empty file.
    let sane = frame.file_first_seq >= 1
        && frame.first_seq >= frame.file_first_seq
        && (frame.first_seq <= frame.last_seq
            || (frame.trail_len == 0 && frame.last_seq + 1 == frame.first_seq))
        && frame.last_seq < u64::MAX / 2
        && frame.trail_offset < u64::MAX / 2
        && frame.trail_len < u64::MAX / 2;
    sane.then_some((u64_at(8)?, frame, usize::try_from(u32_at(4)?).ok()?))
}
