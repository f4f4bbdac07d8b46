//! Decoders for the client messages the proxy inspects. Every read is bounds-checked:
//! a truncated or lying message is an error, never a panic.
//!
//! pgwire's `Message::decode_body` implementations read with `bytes::Buf::get_*`, which
//! panic on short input, so client bytes are decoded here instead.

use std::borrow::Cow;

use super::FrameError;

/// A cursor over a message body.
struct Reader<'a> {
    body: &'a [u8],
}

const TRUNCATED: FrameError = FrameError::Truncated;

impl<'a> Reader<'a> {
    fn cstr(&mut self) -> Result<&'a [u8], FrameError> {
        let end = self.body.iter().position(|b| *b == 0).ok_or(TRUNCATED)?;
        let (s, rest) = self.body.split_at(end);
        self.body = &rest[1..];
        Ok(s)
    }

    /// A prepared statement's or portal's name, refused where the server could take it for
    /// another (see [`FrameError::NameTooLong`]).
    fn name(&mut self) -> Result<String, FrameError> {
        self.borrowed_name().map(str::to_owned)
    }

    /// [`Self::name`], borrowed from the message: for a name only looked up.
    fn borrowed_name(&mut self) -> Result<&'a str, FrameError> {
        let raw = self.cstr()?;
        if raw.len() > super::MAX_NAME_BYTES {
            return Err(FrameError::NameTooLong(raw.len()));
        }
        std::str::from_utf8(raw).map_err(|_| FrameError::NameNotUtf8)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.body.len() < n {
            return Err(TRUNCATED);
        }
        let (s, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, FrameError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, FrameError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<usize, FrameError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| FrameError::BadLength(n.into()))
    }
}

fn text(b: &[u8]) -> String {
    borrowed_text(b).into_owned()
}

/// `b` as text, each invalid sequence replaced; borrowed when it is valid (nearly always),
/// which the faster validator finds out.
fn borrowed_text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Query ('Q'): the SQL string (borrowed from the message when it is valid UTF-8).
pub fn decode_query(body: &[u8]) -> Result<Cow<'_, str>, FrameError> {
    Reader { body }.cstr().map(borrowed_text)
}

/// PasswordMessage ('p'): the password (for lockbox, the token).
pub fn decode_password(body: &[u8]) -> Result<String, FrameError> {
    Reader { body }.cstr().map(text)
}

/// Parse ('P'): statement name, SQL text, and the types it gives its parameters (OIDs, 0
/// for "infer").
pub fn decode_parse(body: &[u8]) -> Result<(String, Cow<'_, str>, Vec<u32>), FrameError> {
    let mut r = Reader { body };
    let name = r.name()?;
    let query = borrowed_text(r.cstr()?);
    let count = r.count()?;
    let mut types = Vec::with_capacity(count.min(r.body.len() / 4));
    for _ in 0..count {
        types.push(r.i32()? as u32);
    }
    Ok((name, query, types))
}

/// One bound parameter as the audit records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Null,
    Text(String),
    /// Binary-format value, kept as raw bytes for the audit to render.
    Binary(Vec<u8>),
}

/// Bind ('B').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: String,
    /// Only looked up: borrowed from the message.
    pub statement: &'a str,
    pub params: Vec<ParamValue>,
}

pub fn decode_bind(body: &[u8]) -> Result<Bind<'_>, FrameError> {
    let mut r = Reader { body };
    let portal = r.name()?;
    let statement = r.borrowed_name()?;
    let params = r.params()?;
    Ok(Bind {
        portal,
        statement,
        params,
    })
}

/// FunctionCall ('F').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub oid: u32,
    pub args: Vec<ParamValue>,
}

/// FunctionCall carries its arguments as Bind does its parameters: format codes, then
/// length-prefixed values.
pub fn decode_function_call(body: &[u8]) -> Result<FunctionCall, FrameError> {
    let mut r = Reader { body };
    let oid = r.i32()? as u32;
    let args = r.params()?;
    Ok(FunctionCall { oid, args })
}

impl Reader<'_> {
    /// Format codes, then values: the shared middle of Bind and FunctionCall.
    fn params(&mut self) -> Result<Vec<ParamValue>, FrameError> {
        let n_formats = self.count()?;
        let mut formats = Vec::with_capacity(n_formats.min(self.body.len() / 2));
        for _ in 0..n_formats {
            formats.push(self.i16()?);
        }
        let n_params = self.count()?;
        let mut params = Vec::with_capacity(n_params.min(self.body.len() / 4));
        for i in 0..n_params {
            let len = self.i32()?;
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => *formats.get(i).ok_or(TRUNCATED)?,
            };
            let value = if len == -1 {
                ParamValue::Null
            } else {
                let len = usize::try_from(len).map_err(|_| FrameError::BadLength(len.into()))?;
                let raw = self.bytes(len)?;
                if format == 1 {
                    ParamValue::Binary(raw.to_vec())
                } else {
                    ParamValue::Text(text(raw))
                }
            };
            params.push(value);
        }
        Ok(params)
    }
}

/// The `n`-th NUL-terminated string of a message body (a Bind's statement name is the
/// second, an Execute's portal the first), read as the decoders read names; `None` if the
/// body has fewer.
pub fn cstr_at(body: &[u8], n: usize) -> Option<Cow<'_, str>> {
    let mut rest = body;
    for _ in 0..n {
        let end = rest.iter().position(|b| *b == 0)?;
        rest = &rest[end + 1..];
    }
    let end = rest.iter().position(|b| *b == 0)?;
    Some(borrowed_text(&rest[..end]))
}

/// Execute ('E'): the portal name.
pub fn decode_execute(body: &[u8]) -> Result<String, FrameError> {
    let mut r = Reader { body };
    let name = r.name()?;
    // The row limit: an Execute without it (or with more) fails at the server only after
    // its Bind planned the statement, so it is refused before it is sent.
    r.bytes(4)?;
    if !r.body.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(name)
}

/// Describe ('D'): `(b'S' | b'P', name)`. Nothing runs, but its name is held to the same
/// rule as the others', so what a long name means never depends on the message.
pub fn decode_describe(body: &[u8]) -> Result<(u8, String), FrameError> {
    decode_close(body)
}

/// Close ('C'): `(b'S' | b'P', name)`.
pub fn decode_close(body: &[u8]) -> Result<(u8, String), FrameError> {
    let mut r = Reader { body };
    let kind = r.bytes(1)?[0];
    Ok((kind, r.name()?))
}

#[cfg(test)]
mod tests {
    use super::super::MAX_NAME_BYTES;
    use super::*;

    /// A body cut short after login is no startup packet: the error says what PostgreSQL
    /// says of it, not "malformed startup packet".
    #[test]
    fn a_truncated_body_is_reported_in_postgresql_words() {
        for error in [
            decode_query(b"SELECT 1").unwrap_err(),
            decode_parse(b"stmt\0SELECT 1\0\0").unwrap_err(),
            decode_bind(b"portal\0stmt\0\0").unwrap_err(),
        ] {
            assert_eq!(error, FrameError::Truncated);
            assert_eq!(error.to_string(), "insufficient data left in message");
        }
    }

    #[test]
    fn cstr_at_reads_the_nth_name_as_the_decoders_do() {
        let bind = b"portal\0stmt\0\0\0";
        assert_eq!(cstr_at(bind, 0).as_deref(), Some("portal"));
        assert_eq!(cstr_at(bind, 1).as_deref(), Some("stmt"));
        assert_eq!(cstr_at(b"\0", 0).as_deref(), Some(""));
        assert_eq!(cstr_at(b"no end", 0), None);
        assert_eq!(cstr_at(b"one\0", 1), None);
    }

    /// PostgreSQL compares names on their first 63 bytes: longer ones could be two names to
    /// lockbox and one to the server. Names not UTF-8 could be one to lockbox (read lossily)
    /// and two to a server that does not check them.
    #[test]
    fn names_postgresql_would_truncate_or_that_are_not_utf8_are_refused() {
        let name = |len: usize| "n".repeat(len);
        let parse = |name: &[u8]| decode_parse(&[name, b"\0SELECT 1\0\0\0"].concat()).map(|p| p.0);
        let execute = |name: &[u8]| decode_execute(&[name, b"\0\0\0\0\0"].concat());
        let close = |name: &[u8]| decode_close(&[b"S", name, b"\0"].concat());
        let describe = |name: &[u8]| decode_describe(&[b"P", name, b"\0"].concat());
        let bind = |portal: &[u8], statement: &[u8]| {
            decode_bind(&[portal, b"\0", statement, b"\0\0\0\0\0\0\0"].concat())
                .map(|b| (b.portal, b.statement.to_owned()))
        };
        let most = name(MAX_NAME_BYTES);
        let over = name(MAX_NAME_BYTES + 1);
        assert_eq!(parse(most.as_bytes()), Ok(most.clone()));
        let typed = decode_parse(b"s\0SELECT $1\0\0\x02\0\0\0\x17\0\0\x40\x01");
        assert_eq!(typed.map(|p| p.2), Ok(vec![23, 16385]));
        assert!(decode_parse(b"s\0SELECT $1\0\0\x02\0\0\0\x17").is_err());
        assert_eq!(execute(most.as_bytes()), Ok(most.clone()));
        assert_eq!(close(most.as_bytes()), Ok((b'S', most.clone())));
        assert!(bind(most.as_bytes(), most.as_bytes()).is_ok());
        let too_long = Err(FrameError::NameTooLong(MAX_NAME_BYTES + 1));
        assert_eq!(parse(over.as_bytes()), too_long);
        assert_eq!(execute(over.as_bytes()), too_long);
        assert_eq!(close(over.as_bytes()).map(|c| c.1), too_long);
        assert_eq!(describe(over.as_bytes()).map(|d| d.1), too_long);
        assert_eq!(describe(most.as_bytes()), Ok((b'P', most.clone())));
        assert_eq!(bind(over.as_bytes(), b"s").map(|b| b.0), too_long);
        assert_eq!(bind(b"p", over.as_bytes()).map(|b| b.0), too_long);
        // 63 bytes that end in a two-byte character: at the limit, whole.
        let multibyte = format!("{}é", name(MAX_NAME_BYTES - 2));
        assert_eq!(execute(multibyte.as_bytes()), Ok(multibyte.clone()));
        let not_utf8 = Err(FrameError::NameNotUtf8);
        assert_eq!(parse(b"\xff"), not_utf8);
        assert_eq!(execute(b"a\xfe"), not_utf8);
        assert_eq!(close(b"\xc3").map(|c| c.1), not_utf8);
        assert_eq!(bind(b"\xff", b"s").map(|b| b.0), not_utf8);
        assert_eq!(bind(b"p", b"\xff").map(|b| b.1), not_utf8);
    }

    fn bind_body(formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = b"p1\0s1\0".to_vec();
        body.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            body.extend_from_slice(&f.to_be_bytes());
        }
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        body
    }

    #[test]
    fn bind_decodes_text_binary_and_null() {
        let body = bind_body(&[0, 1, 0], &[Some(b"42"), Some(&[0xff]), None]);
        let bind = decode_bind(&body).expect("valid bind");
        assert_eq!(bind.portal, "p1");
        assert_eq!(bind.statement, "s1");
        assert_eq!(
            bind.params,
            vec![
                ParamValue::Text("42".into()),
                ParamValue::Binary(vec![0xff]),
                ParamValue::Null
            ]
        );
        // Two format codes for three parameters is malformed, as PostgreSQL says too.
        let mismatched = bind_body(&[0, 1], &[Some(b"1"), Some(b"2"), Some(b"3")]);
        assert!(decode_bind(&mismatched).is_err());
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let check = |decoder: fn(&[u8]) -> bool, body: &[u8]| {
            assert!(!decoder(body), "{body:?} should be rejected");
        };
        check(|b| decode_query(b).is_ok(), b"select 1");
        check(|b| decode_parse(b).is_ok(), b"name\0select");
        check(|b| decode_bind(b).is_ok(), b"\0\0\0");
        check(|b| decode_bind(b).is_ok(), b"\0\0\0\0\0\x01\0\0\0\x09ab");
        check(|b| decode_bind(b).is_ok(), b"\0\0\xff\xff");
        check(|b| decode_close(b).is_ok(), b"");
        check(|b| decode_execute(b).is_ok(), b"portal");
        // An Execute whose row limit is missing or followed by more: the server plans its
        // portal's statement at Bind and fails the Execute only after.
        check(|b| decode_execute(b).is_ok(), b"portal\0");
        check(|b| decode_execute(b).is_ok(), b"portal\0\0\0");
        check(|b| decode_execute(b).is_ok(), b"portal\0\0\0\0\0\0");
        assert_eq!(decode_execute(b"portal\0\0\0\0\0").as_deref(), Ok("portal"));
    }

    #[test]
    fn function_call_arguments_decode_like_bind_parameters() {
        let mut body = 2311u32.to_be_bytes().to_vec();
        body.extend_from_slice(&bind_body(&[0, 1], &[Some(b"abc"), Some(&[1, 2])])[6..]);
        let call = decode_function_call(&body).expect("valid FunctionCall");
        assert_eq!(call.oid, 2311);
        assert_eq!(
            call.args,
            vec![
                ParamValue::Text("abc".into()),
                ParamValue::Binary(vec![1, 2])
            ]
        );
        assert!(decode_function_call(&body[..body.len() - 4]).is_err());
        assert!(decode_function_call(&[0, 0]).is_err());
    }

    #[test]
    fn one_format_code_applies_to_every_parameter() {
        let body = bind_body(&[1], &[Some(&[0xab]), None]);
        let bind = decode_bind(&body).expect("valid bind");
        assert_eq!(
            bind.params,
            vec![ParamValue::Binary(vec![0xab]), ParamValue::Null]
        );
    }
}
