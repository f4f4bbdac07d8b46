//! Watching the upstream byte stream for the few messages that end a statement, without
//! buffering or copying the rest: DataRow and friends are skipped over in place, and the
//! caller forwards every byte it read.

/// A message from upstream that tells the proxy something about a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// CommandComplete: the command tag, e.g. `SELECT 3`.
    Complete(String),
    /// ErrorResponse: SQLSTATE and message, and whether its severity is FATAL or PANIC
    /// (the server's last message: it ends the session).
    Error {
        sqlstate: String,
        message: String,
        fatal: bool,
    },
    /// EmptyQueryResponse.
    Empty,
    /// PortalSuspended: Execute hit its row limit, after returning `rows` DataRows.
    Suspended {
        rows: u64,
    },
    /// ReadyForQuery with its transaction status byte.
    Ready(u8),
    /// CopyInResponse: the server now takes COPY data and ignores Sync until it ends.
    CopyIn,
    /// ParameterStatus: a reported setting changed.
    Parameter {
        name: String,
        value: String,
    },
    /// FunctionCallResponse: a FunctionCall finished.
    FunctionResult,
    /// The header of a DataRow (reported only when rows are counted; the row is skipped).
    DataRow,
    /// The header of a CopyData (COPY TO STDOUT) and its payload size; the data is skipped.
    CopyData(u64),
    /// ParseComplete, BindComplete, CloseComplete: the server took a Parse, Bind or Close.
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// The header of a RowDescription or a NoData: the answer to a Describe (or, for a
    /// RowDescription, the start of a query string's rows). The body is skipped.
    Description,
}

enum State {
    /// Collecting the 5-byte header.
    Header { have: usize, header: [u8; 5] },
    /// Skipping the rest of an uninteresting message.
    Skip { remaining: usize },
    /// Collecting the body of an interesting message: at most `MAX_COLLECT` bytes of it
    /// are kept, the rest is only counted (it is still forwarded by the caller).
    Collect {
        tag: u8,
        remaining: usize,
        len: usize,
    },
}

/// How much of an interesting message the scanner keeps. An ErrorResponse can quote a
/// value of the client's choosing in full (`invalid input syntax …: "xxx…"`, up to ~1 GB);
/// the SQLSTATE and the start of the message are all the audit needs, and keeping more
/// would let one short statement fill the proxy's memory and the audit trail.
pub const MAX_COLLECT: usize = 4096;

/// Incremental scanner over the upstream stream.
pub struct BackendScanner {
    state: State,
    /// Report each DataRow's header (for row limits).
    count_rows: bool,
    /// DataRows since the last message that ends a statement's result: what an Execute
    /// stopped at its row limit returned (PortalSuspended says no number).
    rows_returned: u64,
    /// Where the message being read began in the current `feed`, if it began there.
    started_at: Option<usize>,
    /// Where the first message boundary lies in the current `feed`: 0 when it began
    /// between messages, else the end of the message it continued, if that ended there.
    first_boundary: Option<usize>,
    /// The body collected of the message in `State::Collect` (kept from message to
    /// message, so a statement's CommandComplete and ReadyForQuery allocate nothing).
    body: Vec<u8>,
}

impl Default for BackendScanner {
    fn default() -> Self {
        BackendScanner {
            state: State::Header {
                have: 0,
                header: [0; 5],
            },
            started_at: Some(0),
            first_boundary: Some(0),
            count_rows: false,
            rows_returned: 0,
            body: Vec::new(),
        }
    }
}

/// An event and, when the whole message lies in the fed bytes, its byte range there.
pub type LocatedEvent = (BackendEvent, Option<std::ops::Range<usize>>);

fn interesting(tag: u8) -> bool {
    matches!(
        tag,
        b'C' | b'E' | b'I' | b's' | b'Z' | b'G' | b'S' | b'V' | b'1' | b'2' | b'3'
    )
}

impl BackendScanner {
    /// A scanner that also reports each DataRow (to enforce row limits).
    pub fn counting_rows(count_rows: bool) -> Self {
        BackendScanner {
            count_rows,
            ..BackendScanner::default()
        }
    }

    /// Feeds `data` (any split of the stream) and reports each interesting message.
    pub fn feed(&mut self, data: &[u8], events: &mut Vec<BackendEvent>) {
        let mut located = Vec::new();
        self.feed_located(data, &mut located);
        events.extend(located.into_iter().map(|(e, _)| e));
    }

    /// Like `feed`, with each event's byte range in `data` where it lies wholly there.
    pub fn feed_located(&mut self, all: &[u8], events: &mut Vec<LocatedEvent>) {
        let mut data = all;
        self.started_at = match self.state {
            State::Header { have: 0, .. } => Some(0),
            _ => None,
        };
        self.first_boundary = self.started_at;
        while !data.is_empty() {
            let offset = all.len() - data.len();
            match &mut self.state {
                State::Header { have, header } => {
                    let n = (5 - *have).min(data.len());
                    header[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 5 {
                        let tag = header[0];
                        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                        // Upstream is the real server; a length below 4 would be its bug.
                        let remaining = usize::try_from(len).unwrap_or(4).saturating_sub(4);
                        if tag == b'D' {
                            self.rows_returned += 1;
                            if self.count_rows {
                                let start = self.started_at;
                                events.push((BackendEvent::DataRow, start.map(|s| s..s)));
                            }
                        }
                        if tag == b'T' || tag == b'n' {
                            let start = self.started_at;
                            events.push((BackendEvent::Description, start.map(|s| s..s)));
                        }
                        if tag == b'd' {
                            let start = self.started_at;
                            events.push((
                                BackendEvent::CopyData(remaining as u64),
                                start.map(|s| s..s),
                            ));
                        }
                        self.state = if interesting(tag) {
                            self.body.clear();
                            State::Collect {
                                tag,
                                remaining,
                                len: remaining,
                            }
                        } else {
                            State::Skip { remaining }
                        };
                        self.finish_if_done(offset + n, events);
                    }
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(data.len());
                    *remaining -= n;
                    data = &data[n..];
                    self.finish_if_done(offset + n, events);
                }
                State::Collect { remaining, .. } => {
                    let n = (*remaining).min(data.len());
                    let room = MAX_COLLECT.saturating_sub(self.body.len()).min(n);
                    self.body.extend_from_slice(&data[..room]);
                    *remaining -= n;
                    data = &data[n..];
                    self.finish_if_done(offset + n, events);
                }
            }
        }
    }

    /// Where, in the last fed bytes, an unfinished message worth holding back began: a
    /// partial header, or a statement-ending message still being collected.
    pub fn unfinished_start(&self) -> Option<usize> {
        match self.state {
            State::Header { have: 0, .. } | State::Skip { .. } => None,
            State::Header { .. } | State::Collect { .. } => self.started_at,
        }
    }

    /// Whether everything fed so far ends at a message boundary (nothing is partly read).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// The offset, in the last fed bytes, of the latest message boundary in them: their end
    /// when no message is partly read, else where the partly read message began, if it
    /// began there. Bytes may be inserted there without splitting a message.
    pub fn last_boundary(&self) -> Option<usize> {
        self.started_at
    }

    /// The offset, in the last fed bytes, of their first message boundary: 0 when they
    /// began between messages, else where the message they continued ended, if it ended
    /// in them. Where the client's stream is between messages again when the bytes before
    /// it (the rest of a message already streaming to it) are written.
    pub fn first_boundary(&self) -> Option<usize> {
        self.first_boundary
    }

    /// Forgets a partly read message, to read it again from its first byte.
    pub fn rewind(&mut self) {
        self.state = State::Header {
            have: 0,
            header: [0; 5],
        };
        self.started_at = Some(0);
        self.body.clear();
    }

    fn finish_if_done(&mut self, end: usize, events: &mut Vec<LocatedEvent>) {
        let done = match &self.state {
            State::Header { .. } => false,
            State::Skip { remaining } | State::Collect { remaining, .. } => *remaining == 0,
        };
        if !done {
            return;
        }
        let previous = std::mem::replace(
            &mut self.state,
            State::Header {
                have: 0,
                header: [0; 5],
            },
        );
        let range = self.started_at.map(|start| start..end);
        self.started_at = Some(end);
        self.first_boundary.get_or_insert(end);
        if let State::Collect { tag, len, .. } = previous {
            let event = match tag {
                b's' => BackendEvent::Suspended {
                    rows: std::mem::take(&mut self.rows_returned),
                },
                _ => decode_event(tag, &self.body, len),
            };
            if matches!(tag, b'C' | b'E' | b'I' | b'Z') {
                self.rows_returned = 0;
            }
            events.push((event, range));
        }
    }
}

/// `len` is the body's length on the wire; `body` holds at most `MAX_COLLECT` bytes of it.
fn decode_event(tag: u8, body: &[u8], len: usize) -> BackendEvent {
    match tag {
        b'C' => BackendEvent::Complete(cstr(body)),
        b'E' => decode_error(body, len),
        b'I' => BackendEvent::Empty,
        b'G' => BackendEvent::CopyIn,
        b'V' => BackendEvent::FunctionResult,
        b'1' => BackendEvent::ParseComplete,
        b'2' => BackendEvent::BindComplete,
        b'3' => BackendEvent::CloseComplete,
        b'S' => {
            // The value starts after the name's bytes as sent (its text may be longer, an
            // invalid byte read as U+FFFD).
            let name_end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
            let name = lossy(&body[..name_end]);
            let value = body.get(name_end + 1..).map(cstr).unwrap_or_default();
            BackendEvent::Parameter { name, value }
        }
        _ => BackendEvent::Ready(body.first().copied().unwrap_or(b'I')),
    }
}

/// An ErrorResponse's SQLSTATE and message. When the body was cut, the message's last
/// (unterminated) field ends at the cut, on a character boundary, and says so with the
/// response's full length, so an auditor knows the record is not the whole text.
fn decode_error(body: &[u8], len: usize) -> BackendEvent {
    let cut = body.len() < len;
    let (mut sqlstate, mut message, mut message_cut) = (String::new(), String::new(), false);
    let mut fatal = false;
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = if cut && end == tail.len() {
            whole_chars(&tail[..end])
        } else {
            String::from_utf8_lossy(&tail[..end]).into_owned()
        };
        match field {
            b'C' => sqlstate = value,
            // `S` is localized, `V` (since 9.6) never is.
            b'S' | b'V' => fatal |= matches!(value.as_str(), "FATAL" | "PANIC"),
            b'M' => {
                message = value;
                message_cut = cut && end == tail.len();
            }
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    if message_cut {
        message.push_str(&format!(
            "… [cut by lockbox: the server's error response was {len} bytes]"
        ));
    }
    BackendEvent::Error {
        sqlstate,
        message,
        fatal,
    }
}

/// The text of `bytes` without a character the cut split in two.
fn whole_chars(bytes: &[u8]) -> String {
    let whole = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    String::from_utf8_lossy(whole).into_owned()
}

fn cstr(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    lossy(&body[..end])
}

/// `bytes` as text, each invalid sequence replaced. Valid text (nearly always) is checked by
/// the faster validator and copied once.
fn lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(msg(b'T', b"\0\x01rowdesc-ish"));
        s.extend(msg(b'D', &[7u8; 300]));
        s.extend(msg(b'C', b"SELECT 1\0"));
        s.extend(msg(
            b'E',
            b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0",
        ));
        s.extend(msg(b'I', b""));
        s.extend(msg(b'n', b""));
        s.extend(msg(b'Z', b"T"));
        s
    }

    fn expected() -> Vec<BackendEvent> {
        vec![
            BackendEvent::Description,
            BackendEvent::Complete("SELECT 1".into()),
            BackendEvent::Error {
                sqlstate: "42P01".into(),
                message: "relation \"x\" does not exist".into(),
                fatal: false,
            },
            BackendEvent::Empty,
            BackendEvent::Description,
            BackendEvent::Ready(b'T'),
        ]
    }

    #[test]
    fn a_parameter_value_follows_the_name_as_sent_even_when_it_is_not_utf8() {
        let mut events = Vec::new();
        let status = msg(b'S', b"na\xffme\0value\0");
        BackendScanner::default().feed(&status, &mut events);
        assert_eq!(
            events,
            vec![BackendEvent::Parameter {
                name: "na\u{FFFD}me".into(),
                value: "value".into(),
            }]
        );
    }

    #[test]
    fn a_suspended_portal_says_how_many_rows_its_execute_returned() {
        // Rows of the statement before it (ended by CommandComplete) are not its own; an
        // Execute that resumes the portal counts afresh.
        let mut s = Vec::new();
        s.extend(msg(b'D', b"\0\0"));
        s.extend(msg(b'C', b"SELECT 1\0"));
        for _ in 0..3 {
            s.extend(msg(b'D', b"\0\0"));
        }
        s.extend(msg(b's', b""));
        s.extend(msg(b'D', b"\0\0"));
        s.extend(msg(b's', b""));
        s.extend(msg(b'E', b"SERROR\0C57014\0Mcancelled\0\0"));
        s.extend(msg(b's', b""));
        // Split anywhere, the count is the same.
        for split in [0, 1, 7, s.len() / 2, s.len() - 1] {
            let mut scanner = BackendScanner::default();
            let mut events = Vec::new();
            scanner.feed(&s[..split], &mut events);
            scanner.feed(&s[split..], &mut events);
            let suspended: Vec<u64> = events
                .iter()
                .filter_map(|e| match e {
                    BackendEvent::Suspended { rows } => Some(*rows),
                    _ => None,
                })
                .collect();
            assert_eq!(suspended, [3, 1, 0], "split at {split}");
        }
    }

    #[test]
    fn finds_events_in_one_chunk() {
        let mut events = Vec::new();
        BackendScanner::default().feed(&stream(), &mut events);
        assert_eq!(events, expected());
    }

    #[test]
    fn locates_whole_messages() {
        let s = stream();
        let mut located = Vec::new();
        BackendScanner::default().feed_located(&s, &mut located);
        assert_eq!(located[0], (BackendEvent::Description, Some(0..0)));
        let (event, range) = &located[2];
        assert!(matches!(event, BackendEvent::Error { .. }));
        let range = range.clone().expect("whole message");
        assert_eq!(s[range.start], b'E');
        assert_eq!(&s[range.end..range.end + 1], b"I");
        // Split inside the error: its range is unknown to the second feed, and the scanner
        // says where the unfinished message began.
        let cut = range.start + 7;
        let mut scanner = BackendScanner::default();
        let mut first = Vec::new();
        scanner.feed_located(&s[..cut], &mut first);
        assert_eq!(scanner.unfinished_start(), Some(range.start));
        scanner.rewind();
        let mut again = Vec::new();
        scanner.feed_located(&s[range.start..], &mut again);
        assert_eq!(again[0].1, Some(0..range.end - range.start));
    }

    /// Where each message of `s` begins, and its end.
    fn message_starts(s: &[u8]) -> Vec<usize> {
        let mut starts = vec![0];
        let mut at = 0;
        while at < s.len() {
            at += 1 + i32::from_be_bytes([s[at + 1], s[at + 2], s[at + 3], s[at + 4]]) as usize;
            starts.push(at);
        }
        starts
    }

    #[test]
    fn the_last_boundary_is_where_a_message_begins_or_the_stream_ends() {
        let s = stream();
        let starts = message_starts(&s);
        for chunk in [1, 2, 3, 5, 7, 64, 200] {
            let mut scanner = BackendScanner::default();
            let mut fed = 0;
            for piece in s.chunks(chunk) {
                scanner.feed(piece, &mut Vec::new());
                if let Some(b) = scanner.last_boundary() {
                    assert!(starts.contains(&(fed + b)), "chunk {chunk}: {}", fed + b);
                }
                fed += piece.len();
                assert_eq!(scanner.at_boundary(), starts.contains(&fed));
            }
            let last = s.chunks(chunk).last().map_or(0, <[u8]>::len);
            assert_eq!(scanner.last_boundary(), Some(last), "chunk {chunk}");
        }
    }

    #[test]
    fn the_first_boundary_is_where_the_first_message_of_a_feed_begins() {
        let s = stream();
        let starts = message_starts(&s);
        for chunk in [1, 2, 3, 5, 7, 64, 200] {
            let mut scanner = BackendScanner::default();
            let mut fed = 0;
            for piece in s.chunks(chunk) {
                scanner.feed(piece, &mut Vec::new());
                // A boundary at the piece's very end counts: the bytes before it are the
                // rest of a message, and the stream is between messages after them.
                let expected = starts
                    .iter()
                    .find(|b| (fed..=fed + piece.len()).contains(*b))
                    .map(|b| b - fed);
                assert_eq!(scanner.first_boundary(), expected, "chunk {chunk} at {fed}");
                fed += piece.len();
            }
        }
    }

    /// A huge ErrorResponse (a quoted value of the client's choosing) is kept only up to
    /// `MAX_COLLECT` bytes: the SQLSTATE survives, the message says it was cut and how long
    /// the response was, a split character is dropped, and the stream stays in step.
    #[test]
    fn a_huge_error_is_cut_whatever_the_split() {
        let mut body = b"SERROR\0C22P02\0Minvalid input: \"".to_vec();
        body.extend("é".repeat(300_000).as_bytes());
        body.extend_from_slice(b"\"\0\0");
        let len = body.len();
        let mut s = msg(b'E', &body);
        s.extend(msg(b'Z', b"I"));
        for chunk in [1, 7, 4096, 65536, s.len()] {
            let mut scanner = BackendScanner::default();
            let mut events = Vec::new();
            for piece in s.chunks(chunk) {
                scanner.feed(piece, &mut events);
            }
            let [BackendEvent::Error {
                sqlstate, message, ..
            }, BackendEvent::Ready(b'I')] = events.as_slice()
            else {
                panic!("chunk {chunk}: {events:?}");
            };
            assert_eq!(sqlstate, "22P02");
            assert!(message.len() < MAX_COLLECT + 100, "chunk {chunk}");
            assert!(message.starts_with("invalid input: \"éé"));
            assert!(
                !message.contains('\u{fffd}'),
                "a split character is dropped"
            );
            assert!(
                message.ends_with(&format!("error response was {len} bytes]")),
                "{message}"
            );
        }
    }

    #[test]
    fn a_fatal_or_panic_is_told_from_an_error_whatever_the_split() {
        let fatal = msg(
            b'E',
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        );
        let panic = msg(b'E', b"SPANIK\0VPANIC\0CXX000\0Mboom\0\0");
        let error = msg(b'E', b"SERROR\0VERROR\0C42P01\0Mno such relation\0\0");
        for (bytes, want) in [(fatal, true), (panic, true), (error, false)] {
            for cut in 1..bytes.len() {
                let mut scanner = BackendScanner::default();
                let mut events = Vec::new();
                scanner.feed(&bytes[..cut], &mut events);
                scanner.feed(&bytes[cut..], &mut events);
                let [BackendEvent::Error { fatal, .. }] = events.as_slice() else {
                    panic!("one error at cut {cut}: {events:?}");
                };
                assert_eq!(*fatal, want, "cut {cut}");
            }
        }
    }

    #[test]
    fn an_error_with_a_long_detail_keeps_its_whole_message() {
        let mut body = b"SERROR\0C22P02\0Mshort\0D".to_vec();
        body.extend(vec![b'x'; 10_000]);
        body.extend_from_slice(b"\0\0");
        let mut events = Vec::new();
        BackendScanner::default().feed(&msg(b'E', &body), &mut events);
        assert_eq!(
            events,
            vec![BackendEvent::Error {
                sqlstate: "22P02".into(),
                message: "short".into(),
                fatal: false,
            }]
        );
    }

    #[test]
    fn finds_the_same_events_whatever_the_split() {
        let s = stream();
        for chunk in [1, 2, 3, 5, 7, 64] {
            let mut scanner = BackendScanner::default();
            let mut events = Vec::new();
            for piece in s.chunks(chunk) {
                scanner.feed(piece, &mut events);
            }
            assert_eq!(events, expected(), "chunk size {chunk}");
        }
    }
}
