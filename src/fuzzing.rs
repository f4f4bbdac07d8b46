//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`) and the seeded random tests
//! below: each hands arbitrary bytes to one decoder the proxy runs on what a client, a
//! server or an operator sends, and checks what must hold beyond "no panic". An `Err` is a
//! broken invariant; the targets turn it into a crash. Not an API: hidden from the docs.

use std::path::Path;
use std::sync::OnceLock;

use bytes::BytesMut;

use crate::policy::AccessLevel;
use crate::token::TokenAuthority;
use crate::wire::{self, BackendScanner, StartupPacket};

/// The frontend decoders and the relay's batch inspection, under each access level and a
/// small message limit (so the over-limit path is reached too).
pub fn frontend(data: &[u8]) -> Result<(), String> {
    for access in [AccessLevel::Read, AccessLevel::Write, AccessLevel::Admin] {
        crate::proxy::inspect_client_bytes(data, access, 1 << 20)?;
    }
    crate::proxy::inspect_client_bytes(data, AccessLevel::Read, 64)?;
    // Each decoder on the bytes as a message body, whatever its tag says.
    let _ = wire::decode_query(data);
    let _ = wire::decode_password(data);
    let _ = wire::decode_parse(data);
    let _ = wire::decode_bind(data);
    let _ = wire::decode_function_call(data);
    let _ = wire::decode_execute(data);
    let _ = wire::decode_close(data);
    Ok(())
}

/// The upstream scanner: the events do not depend on how the stream is split into reads
/// (the first byte picks the split points), located ranges lie in the bytes fed, and the
/// last boundary is inside them.
pub fn backend(data: &[u8]) -> Result<(), String> {
    let Some((&step, stream)) = data.split_first() else {
        return Ok(());
    };
    for count_rows in [false, true] {
        let mut whole = Vec::new();
        BackendScanner::counting_rows(count_rows).feed(stream, &mut whole);
        let mut scanner = BackendScanner::counting_rows(count_rows);
        let mut split = Vec::new();
        let chunk = usize::from(step % 17) + 1;
        for piece in stream.chunks(chunk) {
            let mut located = Vec::new();
            scanner.feed_located(piece, &mut located);
            for (_, range) in &located {
                if let Some(r) = range {
                    if r.start > r.end || r.end > piece.len() {
                        return Err(format!("event range {r:?} outside {} bytes", piece.len()));
                    }
                }
            }
            if scanner.last_boundary().is_some_and(|b| b > piece.len()) {
                return Err(format!(
                    "last boundary {:?} outside {} bytes",
                    scanner.last_boundary(),
                    piece.len()
                ));
            }
            split.extend(located.into_iter().map(|(e, _)| e));
        }
        if whole != split {
            return Err(format!(
                "events differ when read {chunk} bytes at a time:\n{whole:?}\n{split:?}"
            ));
        }
    }
    Ok(())
}

/// Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), one
/// after another as a client may send them: each parsed packet consumes bytes, and the
/// parser waits for more bytes only for a packet within the limit.
pub fn startup(data: &[u8]) -> Result<(), String> {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match wire::parse_startup(&mut buf) {
            Ok(Some(packet)) => {
                if buf.len() >= before {
                    return Err(format!("{packet:?} consumed nothing"));
                }
                if let StartupPacket::Startup(startup) = &packet {
                    let _ = startup.get("user");
                }
            }
            Ok(None) => {
                // Waiting is only for a packet within the limit: a longer one is refused
                // from its length alone, before its bytes are buffered.
                if let Some(len) = buf.get(..4) {
                    let declared = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                    if usize::try_from(declared).map_or(true, |d| d > wire::MAX_STARTUP_PACKET) {
                        return Err(format!("waits for a packet declared {declared} bytes long"));
                    }
                }
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

/// The token verifier: arbitrary text is refused, and so is a real token with any byte
/// changed (the input picks which bytes and what they become).
pub fn token(data: &[u8]) -> Result<(), String> {
    let (authority, genuine) = token_fixture()?;
    if let Ok(text) = std::str::from_utf8(data) {
        if text != genuine && authority.verify(text).is_ok() {
            return Err(format!("accepted {text:?}"));
        }
    }
    let mut forged = genuine.as_bytes().to_vec();
    for pair in data.chunks(2) {
        if let [at, byte] = pair {
            let i = usize::from(*at) * forged.len() / 256;
            forged[i] = *byte;
        }
    }
    if let Ok(text) = std::str::from_utf8(&forged) {
        if text != genuine && authority.verify(text).is_ok() {
            return Err(format!("accepted a changed token {text:?}"));
        }
    }
    Ok(())
}

fn token_fixture() -> Result<&'static (TokenAuthority, String), String> {
    static FIXTURE: OnceLock<Result<(TokenAuthority, String), String>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let pem = crate::keys::generate_signing_key_pem().map_err(|e| e.to_string())?;
            let authority = TokenAuthority::from_pem(&pem, "lockbox", "lockbox-proxy")?;
            let grant = crate::token::TokenGrant {
                engineer: "eve",
                database: "sales",
                request_id: "req-1",
                access: AccessLevel::Read,
            };
            let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            let genuine = authority.issue(&grant, expires)?;
            authority
                .verify(&genuine)
                .map_err(|e| format!("the genuine token is refused: {e}"))?;
            Ok((authority, genuine))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The config loader on arbitrary text: an error or a config, never a panic. Relative
/// paths resolve under a folder that does not exist, so nothing on the machine is read.
pub fn config(data: &[u8]) -> Result<(), String> {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_toml(text, Path::new("/nonexistent/lockbox-fuzz"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
