//! The database itself stopped (fast, immediate) under running sessions.

use super::*;

use crate::upstream_faults::{other_database_on_the_shared_cluster, own_cluster};

fn stop_fast(pg: &PgSandbox) {
    let pg_ctl = pg.bin_dir().join("pg_ctl");
    let mut c = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        std::process::Command::new(pg_ctl)
    };
    let out = c
        .arg("-D")
        .arg(pg.data_dir())
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .expect("pg_ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn database_stopped(fast: bool) {
    let pg = own_cluster();
    other_database_on_the_shared_cluster();
    let env = Env::with(
        if fast {
            "se_pg_fast"
        } else {
            "se_pg_immediate"
        },
        Options {
            plaintext: false,
            cluster: Some(pg),
            other_cluster: Some(crate::harness::cluster()),
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut idle = tls_session(&env, "eve", &token, None).await;
    let mut sleeping = tls_session(&env, "eve", &token, None).await;
    sleeping
        .write_all(&query("SELECT /* se_sleeping */ pg_sleep(60)"))
        .await
        .unwrap();
    sleeping.flush().await.unwrap();
    let mut slow = tls_session(&env, "eve", &token, Some(4096)).await;
    slow.write_all(&query(
        "SELECT g, repeat('x', 20000) FROM generate_series(1, 2000) g",
    ))
    .await
    .unwrap();
    slow.flush().await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = slow.read(&mut first).await.unwrap();
    first.truncate(n);
    wait_running(pg, &env.db, "se_sleeping").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if fast {
        stop_fast(pg);
    } else {
        pg.crash().expect("pg_ctl stop -m immediate");
    }
    let label = if fast { "fast" } else { "immediate" };
    let (got, close) =
        read_to_end_slowly(&mut idle, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    let a = assert_ends_with_fatal_then_clean_close(&format!("{label} idle"), &got, &close);
    let (got, close) = read_to_end_slowly(
        &mut sleeping,
        16384,
        Duration::ZERO,
        Duration::from_secs(30),
    )
    .await;
    let b = assert_ends_with_fatal_then_clean_close(&format!("{label} sleeping"), &got, &close);
    let (rest, close) = read_to_end_slowly(
        &mut slow,
        32 * 1024,
        Duration::from_millis(30),
        Duration::from_secs(60),
    )
    .await;
    first.extend_from_slice(&rest);
    let c = assert_ends_with_fatal_then_clean_close(&format!("{label} slow"), &first, &close);
    eprintln!("{label}: {a} {b} {c}");
    pg.start_again().expect("start again");
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_postgres_stopped_immediate() {
    database_stopped(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_postgres_stopped_fast() {
    database_stopped(true).await;
}

// ---------------------------------------------------------------------------------------
// 2./3. Resources and bookkeeping
