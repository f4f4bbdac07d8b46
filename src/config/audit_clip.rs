//! `[audit] max_field_bytes` and `max_record_bytes`: how much of a value one audit record
//! keeps before it is clipped to a prefix, its length and its SHA-256 (`audit::clip`).

use super::{invalid, parse_size, ConfigError};
use crate::audit::ClipLimits;

/// The smallest per-field limit: a prefix shorter than this tells a reader nothing.
const MIN_FIELD_BYTES: u64 = 256;

/// Validates the two keys (sizes like `64KiB`, `1MiB`; unset: the defaults).
pub(super) fn validate(
    max_field: Option<&str>,
    max_record: Option<&str>,
) -> Result<ClipLimits, ConfigError> {
    let defaults = ClipLimits::default();
    let size = |key: &str, text: Option<&str>, default: usize| -> Result<usize, ConfigError> {
        match text {
            None => Ok(default),
            Some(t) => usize::try_from(parse_size(key, t)?)
                .map_err(|_| invalid(key, "is larger than this machine can address")),
        }
    };
    let max_field_bytes = size("audit.max_field_bytes", max_field, defaults.max_field_bytes)?;
    let max_record_bytes = size(
        "audit.max_record_bytes",
        max_record,
        defaults.max_record_bytes,
    )?;
    if (max_field_bytes as u64) < MIN_FIELD_BYTES {
        return Err(invalid(
            "audit.max_field_bytes",
            "must be at least 256 bytes",
        ));
    }
    if max_record_bytes < max_field_bytes {
        return Err(invalid(
            "audit.max_record_bytes",
            "must be at least audit.max_field_bytes",
        ));
    }
    Ok(ClipLimits {
        max_field_bytes,
        max_record_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(field: Option<&str>, record: Option<&str>, expected: Result<(usize, usize), &str>) {
        let got = validate(field, record)
            .map(|l| (l.max_field_bytes, l.max_record_bytes))
            .map_err(|e| e.to_string());
        match expected {
            Ok(v) => assert_eq!(got, Ok(v)),
            Err(key) => assert!(got.as_ref().is_err_and(|e| e.contains(key)), "{got:?}"),
        }
    }

    #[test]
    fn clip_limits_are_validated() {
        check(None, None, Ok((64 * 1024, 1024 * 1024)));
        check(Some("1KiB"), Some("4KiB"), Ok((1024, 4096)));
        check(Some("100"), None, Err("audit.max_field_bytes"));
        check(Some("2MiB"), None, Err("audit.max_record_bytes"));
        check(Some("lots"), None, Err("audit.max_field_bytes"));
    }
}
