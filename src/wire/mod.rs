//! PostgreSQL wire protocol: framing and the few messages the proxy must understand.
//!
//! This module knows bytes and messages, never grants or policy. Messages the proxy does
//! not inspect are never decoded: they are forwarded as the bytes that arrived.

mod decode;
mod encode;
mod frame;
mod scan;

pub use decode::{
    cstr_at, decode_bind, decode_close, decode_describe, decode_execute, decode_function_call,
    decode_parse, decode_password, decode_query, Bind, ParamValue,
};
pub use encode::{
    authentication_cleartext, authentication_ok, backend_key_data, cancel_request, error_response,
    negotiate_protocol_version, ready_for_query, Severity,
};
pub use frame::{
    declared_frame_size, frame_len, parse_startup, reserve_rest_of_frame, split_frame, FrameError,
    Startup, StartupPacket,
};
pub use scan::{BackendEvent, BackendScanner, LocatedEvent};

/// SQLSTATE codes the proxy itself produces.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const IO_ERROR: &str = "58030";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const OUT_OF_MEMORY: &str = "53200";
}

/// Protocol codes that stand where a version number would in a startup packet.
pub mod codes {
    pub const PROTOCOL_3_0: i32 = 196_608;
    pub const SSL_REQUEST: i32 = 80_877_103;
    pub const GSSENC_REQUEST: i32 = 80_877_104;
    pub const CANCEL_REQUEST: i32 = 80_877_102;
}

/// PostgreSQL's own limit on a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// The longest prepared statement or portal name the proxy accepts: PostgreSQL's
/// NAMEDATALEN - 1, the bytes of a name its hash tables compare.
pub const MAX_NAME_BYTES: usize = 63;
