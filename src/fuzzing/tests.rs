//! Seeded random generation for every fuzz entry point, so `cargo test` runs them on
//! every machine (a nightly toolchain and `cargo fuzz` are not needed), and the inputs the
//! fuzzer once found (`fuzz/regressions/<target>/`) run as regression cases.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Cases per generator: enough to reach every message type and error path many times,
/// few enough for a debug build to take about a second.
const CASES: u64 = 400;

/// A fuzz entry point: `Err` says which invariant broke.
type Entry = fn(&[u8]) -> Result<(), String>;

fn run(name: &str, entry: Entry, generate: fn(&mut StdRng) -> Vec<u8>) {
    run_cases(name, CASES, entry, generate);
}

fn run_cases(name: &str, cases: u64, entry: Entry, generate: fn(&mut StdRng) -> Vec<u8>) {
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let input = generate(&mut rng);
        if let Err(broken) = entry(&input) {
            panic!("{name}, seed {seed}: {broken}\ninput: {input:?}");
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

const SQL: &[&str] = &[
    "SELECT 1",
    "select * from t where a = $1",
    "DELETE FROM t",
    "UPDATE t SET a = 1 WHERE b = 2",
    "DROP TABLE t",
    "ALTER TABLE t DROP COLUMN c",
    "TRUNCATE t",
    "SELECT * FROM secrets",
    "SELECT * FROM hr.pay",
    "BEGIN; INSERT INTO t VALUES (1); COMMIT",
    "COPY t TO STDOUT",
    "COPY t FROM STDIN",
    "CREATE TEMP TABLE pg_class (x int)",
    "SET search_path = evil, public",
    "PREPARE p AS DELETE FROM t",
    "EXECUTE p",
    "DO $$ BEGIN PERFORM 1; END $$",
    "SELECT 'unterminated",
    "/* unterminated",
    "SELECT $tag$ x $tag$; DROP TABLE t",
    "",
    ";;;",
];

fn random_sql(rng: &mut StdRng) -> String {
    let mut text = String::new();
    for _ in 0..rng.random_range(1..4) {
        text.push_str(SQL[rng.random_range(0..SQL.len())]);
        text.push_str(["; ", " ", "\n", ";"][rng.random_range(0..4)]);
    }
    if rng.random_ratio(1, 5) {
        let at = rng.random_range(0..=text.len());
        if text.is_char_boundary(at) {
            text.insert(
                at,
                ['\'', '"', '$', '\\', '\u{0}', 'é'][rng.random_range(0..6)],
            );
        }
    }
    text
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

fn frontend_message(rng: &mut StdRng) -> Vec<u8> {
    let name = ["", "s1", "p"][rng.random_range(0..3)];
    match rng.random_range(0..13) {
        0 => message(b'Q', &cstr(&random_sql(rng))),
        1 => {
            let mut body = cstr(name);
            body.extend(cstr(&random_sql(rng)));
            body.extend_from_slice(&0i16.to_be_bytes());
            message(b'P', &body)
        }
        2 => {
            // Bind: portal, statement, formats, parameters (one may be NULL), result formats.
            let mut body = cstr("");
            body.extend(cstr(name));
            body.extend_from_slice(&0i16.to_be_bytes());
            let params = rng.random_range(0..3i16);
            body.extend_from_slice(&params.to_be_bytes());
            for _ in 0..params {
                if rng.random_ratio(1, 4) {
                    body.extend_from_slice(&(-1i32).to_be_bytes());
                } else {
                    let value = random_bytes(rng, 8);
                    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    body.extend(value);
                }
            }
            body.extend_from_slice(&0i16.to_be_bytes());
            message(b'B', &body)
        }
        3 => {
            let mut body = cstr("");
            body.extend_from_slice(&rng.random_range(0..3i32).to_be_bytes());
            message(b'E', &body)
        }
        4 => {
            let mut body = vec![[b'S', b'P'][rng.random_range(0..2)]];
            body.extend(cstr(name));
            message(b'D', &body)
        }
        5 => {
            let mut body = vec![[b'S', b'P'][rng.random_range(0..2)]];
            body.extend(cstr(name));
            message(b'C', &body)
        }
        6 => message(b'S', &[]),
        7 => message(b'H', &[]),
        8 => message(b'd', &random_bytes(rng, 16)),
        9 => message(b'c', &[]),
        10 => message(b'f', &cstr("client gave up")),
        11 => {
            // FunctionCall: oid, formats, arguments, result format.
            let mut body = rng.random_range(0..5000i32).to_be_bytes().to_vec();
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes());
            body.extend_from_slice(&4i32.to_be_bytes());
            body.extend_from_slice(&rng.random::<i32>().to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            message(b'F', &body)
        }
        _ => {
            // Anything at all: a tag nobody sends, or a known tag with a broken body.
            let tag = rng.random();
            message(tag, &random_bytes(rng, 12))
        }
    }
}

/// A client's bytes after login: mostly well-formed messages, sometimes with a length
/// changed or cut short.
fn frontend_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..8) {
        let mut m = frontend_message(rng);
        if rng.random_ratio(1, 10) && m.len() >= 5 {
            let len: i32 = [0, 3, 4, -1, i32::MAX, rng.random_range(0..64)][rng.random_range(0..6)];
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        out.extend(m);
    }
    if rng.random_ratio(1, 5) {
        let cut = rng.random_range(0..=out.len());
        out.truncate(cut);
    }
    out
}

fn backend_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = vec![rng.random()];
    for _ in 0..rng.random_range(1..12) {
        let m = match rng.random_range(0..10) {
            0 => message(
                b'C',
                &cstr(["SELECT 3", "INSERT 0 1", "COPY 10", "SET"][rng.random_range(0..4)]),
            ),
            1 => {
                let mut body = b"SERROR\0".to_vec();
                body.extend(b"C42501\0");
                // Now and then far over what the scanner collects of a message (4 KiB).
                let long = if rng.random_ratio(1, 8) { 6000 } else { 64 };
                let text = "x".repeat(rng.random_range(0..long));
                body.push(b'M');
                body.extend(cstr(&text));
                body.push(0);
                message(b'E', &body)
            }
            2 => message(b'Z', &[[b'I', b'T', b'E'][rng.random_range(0..3)]]),
            3 => message(b'D', &random_bytes(rng, 40)),
            4 => message(b'T', &random_bytes(rng, 20)),
            5 => message(b'd', &random_bytes(rng, 30)),
            6 => {
                let mut body = cstr(
                    [
                        "search_path",
                        "client_encoding",
                        "standard_conforming_strings",
                    ][rng.random_range(0..3)],
                );
                body.extend(cstr("x"));
                message(b'S', &body)
            }
            7 => message(
                [b'1', b'2', b'3', b'I', b's', b'n', b'G', b'H', b'W', b'c']
                    [rng.random_range(0..10)],
                &[],
            ),
            8 => message(b'N', &cstr("SNOTICE")),
            _ => random_bytes(rng, 10),
        };
        out.extend(m);
    }
    out
}

fn startup_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let packet = match rng.random_range(0..6) {
            0 => [8i32.to_be_bytes(), 80877103i32.to_be_bytes()].concat(),
            1 => [8i32.to_be_bytes(), 80877104i32.to_be_bytes()].concat(),
            2 => {
                let mut p = 16i32.to_be_bytes().to_vec();
                p.extend_from_slice(&80877102i32.to_be_bytes());
                p.extend(random_bytes(rng, 8));
                p.truncate(16);
                p
            }
            3 => {
                let mut body = 196608i32.to_be_bytes().to_vec();
                for (k, v) in [("user", "eve"), ("database", "sales"), ("user", "twice")]
                    .iter()
                    .take(rng.random_range(0..4))
                {
                    body.extend(cstr(k));
                    body.extend(cstr(v));
                }
                if rng.random_ratio(3, 4) {
                    body.push(0);
                }
                let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
                p.extend(body);
                p
            }
            4 => {
                let declared: i32 = [0, 7, 8, 10_000, 10_001, i32::MAX, -5][rng.random_range(0..7)];
                let mut p = declared.to_be_bytes().to_vec();
                p.extend(random_bytes(rng, 12));
                p
            }
            _ => random_bytes(rng, 20),
        };
        out.extend(packet);
    }
    out
}

fn token_input(rng: &mut StdRng) -> Vec<u8> {
    // Pairs of (where, what) for `token`'s changed copy, or text that looks like a JWT.
    if rng.random_ratio(1, 2) {
        random_bytes(rng, 8)
    } else {
        let part = |rng: &mut StdRng| -> String {
            let n = rng.random_range(0..40);
            (0..n)
                .map(|_| {
                    let alphabet =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/";
                    alphabet[rng.random_range(0..alphabet.len())] as char
                })
                .collect()
        };
        format!("eyJ{}.{}.{}", part(rng), part(rng), part(rng)).into_bytes()
    }
}

const SHIPPED_CONFIG: &str = include_str!("../../config/lockbox.toml");

/// The shipped config with lines dropped, repeated, swapped or changed.
fn config_text(rng: &mut StdRng) -> Vec<u8> {
    let mut lines: Vec<String> = SHIPPED_CONFIG.lines().map(str::to_owned).collect();
    for _ in 0..rng.random_range(1..6) {
        if lines.is_empty() {
            break;
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..5) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            2 => {
                let j = rng.random_range(0..lines.len());
                lines.swap(i, j);
            }
            3 => {
                let replacement = [
                    "listen = \"[::1]:99999\"",
                    "ttl = \"-1s\"",
                    "max_connections = 0",
                    "max_field_bytes = \"1 GiB\"",
                    "warn_before = [\"10y\"]",
                    "durability = \"sometimes\"",
                    "[[databases]]",
                    "name = \"\"",
                    "port = 0",
                ][rng.random_range(0..9)];
                lines[i] = replacement.to_owned();
            }
            _ => {
                let at = rng.random_range(0..=lines[i].len());
                if lines[i].is_char_boundary(at) {
                    lines[i].insert(at, ['"', '[', '=', '\u{0}', 'é'][rng.random_range(0..5)]);
                }
            }
        }
    }
    lines.join("\n").into_bytes()
}

#[test]
fn frontend_bytes_never_break_the_relays_inspection() {
    run("frontend", frontend, frontend_stream);
    // The generator gets past framing into inspection: most streams yield records.
    let reached = (0..CASES)
        .filter(|&seed| {
            let input = frontend_stream(&mut StdRng::seed_from_u64(seed));
            crate::proxy::inspect_client_bytes(&input, AccessLevel::Write, 1 << 20)
                .is_ok_and(|n| n > 0)
        })
        .count() as u64;
    assert!(
        reached > CASES / 2,
        "only {reached} of {CASES} streams reached inspection"
    );
}

#[test]
fn backend_events_do_not_depend_on_how_the_stream_is_read() {
    run("backend", backend, backend_stream);
}

#[test]
fn startup_packets_are_parsed_or_refused_by_their_length() {
    run("startup", startup, startup_stream);
}

#[test]
fn no_token_but_the_issued_one_verifies() {
    // A refused signature costs milliseconds in a debug build: fewer cases than the others.
    run_cases("token", CASES / 8, token, token_input);
    // Every third byte of the genuine token changed (header, claims and signature alike).
    let (authority, genuine) = token_fixture().expect("token fixture");
    for i in (0..genuine.len()).step_by(3) {
        let mut changed = genuine.as_bytes().to_vec();
        changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
        let text = String::from_utf8(changed).expect("ascii");
        assert!(
            authority.verify(&text).is_err(),
            "byte {i} changed still verifies"
        );
    }
}

#[test]
fn config_text_is_loaded_or_refused_never_a_panic() {
    run("config", config, config_text);
}

#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let targets: [(&str, Entry); 5] = [
        ("frontend", frontend),
        ("backend", backend),
        ("startup", startup),
        ("token", token),
        ("config", config),
    ];
    let mut cases = 0;
    for (name, entry) in targets {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (a target's regression folder is kept even when empty)",
                dir.display()
            )
        });
        for file in entries {
            let path = file.expect("dir entry").path();
            if path.file_name().is_some_and(|n| n == "README") {
                continue;
            }
            let input = std::fs::read(&path).expect("read case");
            if let Err(broken) = entry(&input) {
                panic!("{}: {broken}", path.display());
            }
            cases += 1;
        }
    }
    assert!(cases > 0, "no regression case under {}", root.display());
}
