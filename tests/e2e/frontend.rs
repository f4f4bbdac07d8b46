//! Frontend protocol messages, byte for byte, for tests that speak the protocol raw.

use crate::harness::message;

/// Parse of `sql` as the prepared statement `name` ("" is the unnamed one), no types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    )
}

/// Bind of `statement` to `portal`, no parameters, text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    bind_with(portal, statement, &[])
}

/// Bind of `statement` to `portal` with text-format `values`, text results.
pub fn bind_with(portal: &str, statement: &str, values: &[&str]) -> Vec<u8> {
    let mut body = [portal.as_bytes(), b"\0", statement.as_bytes(), b"\0"].concat();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for value in values {
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// Execute of `portal`, every row.
pub fn execute(portal: &str) -> Vec<u8> {
    execute_rows(portal, 0)
}

/// Execute of `portal`, at most `rows` rows (0: all); the server answers PortalSuspended
/// when more are left.
pub fn execute_rows(portal: &str, rows: i32) -> Vec<u8> {
    message(
        b'E',
        &[portal.as_bytes(), b"\0", &rows.to_be_bytes()].concat(),
    )
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    message(b'D', &[&[kind][..], name.as_bytes(), b"\0"].concat())
}

/// Close of a statement (`b'S'`) or portal (`b'P'`); any other kind is an error.
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    message(b'C', &[&[kind][..], name.as_bytes(), b"\0"].concat())
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}
