//! Splitting and classification of arbitrary query strings: never a panic, every token
//! PostgreSQL's scanner sees lies in a statement the audit records
//! (`lockbox::sql::check_split_invariants`), and the analysis cache answers the text with
//! other numbers as a cold analysis does (`lockbox::guard::check_cache_agrees`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The proxy only ever sees valid UTF-8 query text (anything else ends the session).
    if let Ok(sql) = std::str::from_utf8(data) {
        if let Err(broken) = lockbox::sql::check_split_invariants(sql) {
            panic!("{sql:?}: {broken}");
        }
        // Classification under every level must not panic either.
        for analysis in lockbox::guard::analyze_query(sql) {
            let _ = lockbox::guard::check_class(lockbox::policy::AccessLevel::Read, analysis.analysis.class);
        }
        let _ = lockbox::audit::redact::mask_literals(sql);
        // The same text with other numbers: through the cache each analyses as it does cold.
        if let Some(other) = lockbox::guard::with_other_numbers(sql, data.len() as u64) {
            for (warm, text) in [(sql, other.as_str()), (other.as_str(), sql)] {
                if let Err(broken) = lockbox::guard::check_cache_agrees(warm, text) {
                    panic!("{broken}");
                }
            }
        }
    }
});
