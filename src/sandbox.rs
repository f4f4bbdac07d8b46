//! A throwaway PostgreSQL server: `initdb` + `pg_ctl` into a temporary folder, on a free
//! port. The demo runs on one; the tests run on one per test binary. As root, the server
//! binaries run as the `postgres` user, since PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod faults;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, via pg_config, or under \
         /usr/lib/postgresql/*/bin: install them (e.g. `apt-get install -y postgresql`)"
    )]
    NoServerBinaries,
    #[error("running as root, but there is no `postgres` user to run the server as")]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Step { step: String, detail: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn step(step: &str, detail: impl Into<String>) -> SandboxError {
    SandboxError::Step {
        step: step.to_owned(),
        detail: detail.into(),
    }
}

/// A running throwaway server; stopped and deleted on drop.
pub struct PgSandbox {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    stopped: bool,
    /// Extra `-c name=value` server settings given to `start_with`.
    settings: Vec<(String, String)>,
}

/// The superuser of sandbox clusters.
pub const SUPERUSER: &str = "postgres";

impl PgSandbox {
    pub fn start() -> Result<PgSandbox, SandboxError> {
        Self::start_with(&[])
    }

    /// Starts a server with extra settings (`("log_statement", "all")`, …) on top of the
    /// sandbox's own. Values are passed single-quoted: they must not contain a quote.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PgSandbox, SandboxError> {
        if let Some((name, _)) = settings.iter().find(|(_, v)| v.contains('\'')) {
            return Err(step(
                "settings",
                format!("the value of {name} contains a quote"),
            ));
        }
        let bin = find_server_binaries()?;
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("lockbox-pg-").tempdir()?;
        if as_postgres {
            chown_to_postgres(dir.path())?;
        }
        let mut sandbox = PgSandbox {
            dir,
            bin,
            port: free_port()?,
            as_postgres,
            stopped: true,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        sandbox.init()?;
        // The port was free when chosen, but another process may bind it before the
        // server does (tests and demos start clusters side by side): try fresh ones.
        let mut attempts = 0;
        while let Err(e) = sandbox.launch() {
            attempts += 1;
            if attempts == 3 || !e.to_string().contains("in use") {
                return Err(e);
            }
            sandbox.port = free_port()?;
        }
        sandbox.stopped = false;
        sandbox.spawn_watchdog();
        Ok(sandbox)
    }

    /// The cluster's data folder (server logs written by the logging collector live under
    /// its `log` folder).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server command, run as `postgres` when we are root.
    fn server_command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(&self) -> Result<(), SandboxError> {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .output()?;
        if !out.status.success() {
            return Err(step("initdb", String::from_utf8_lossy(&out.stderr)));
        }
        // Password logins for the roles the proxy uses; trust only for the superuser, so
        // tests reach the database behind the proxy's back.
        let hba = "local all all trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host all lockbox_trust 127.0.0.1/32 trust\n\
                   host all lockbox_md5 127.0.0.1/32 md5\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn launch(&self) -> Result<(), SandboxError> {
        let mut options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}='{value}'"));
        }
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(step(
                "pg_ctl start",
                format!("{}\n{log}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(())
    }

    /// Stops the server if this process dies without running `Drop` (a killed test run).
    fn spawn_watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir().display(),
            dir = self.dir.path().display(),
        );
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Turns TLS on with this certificate and key (PEM), without a restart.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.data_dir().join("server.crt");
        let key = self.data_dir().join("server.key");
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        if self.as_postgres {
            for file in [&cert, &key] {
                chown_to_postgres(file)?;
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// A superuser connection URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` through psql as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, SandboxError> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            return Err(step("psql", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The folder of the server binaries (psql, pgbench live there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl PgSandbox {
    /// Starts a server stopped with [`PgSandbox::stop`] again, on the same port and data.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        if !self.stopped {
            return Ok(());
        }
        self.launch()?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for PgSandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now, below the kernel's range for outgoing connections
/// where it can: a port from `bind(0)` is in that range, and between this call and the
/// listener's own bind any connection (a test's, a load generator's) could take it as its
/// local port ("address already in use" at start, seen under a soak's connection churn).
/// Ports are handed out in turn from a random start, so one process never hands out the
/// same port twice while others are still waiting to be bound.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let below = ephemeral_start().unwrap_or(32_768);
    if below > LISTEN_PORTS_FROM + 1_000 {
        let span = u32::from(below - LISTEN_PORTS_FROM);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        // The first call picks where this process starts; later ones take the next.
        let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::SeqCst, Ordering::SeqCst);
        for _ in 0..64 {
            let turn = NEXT.fetch_add(1, Ordering::SeqCst) % span;
            let Ok(offset) = u16::try_from(turn) else {
                continue;
            };
            let port = LISTEN_PORTS_FROM + offset;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The lowest port `free_port` hands out below the outgoing range.
const LISTEN_PORTS_FROM: u16 = 20_000;

/// The first port of the kernel's range for outgoing connections.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn id_of(flag: &str) -> Result<u32, SandboxError> {
    let out = Command::new("id").args([flag, "postgres"]).output()?;
    if !out.status.success() {
        return Err(SandboxError::NoPostgresUser);
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| SandboxError::NoPostgresUser)
}

fn chown_to_postgres(path: &Path) -> Result<(), SandboxError> {
    std::os::unix::fs::chown(path, Some(id_of("-u")?), Some(id_of("-g")?))?;
    Ok(())
}

/// Finds the folder holding `initdb` and `pg_ctl`.
pub fn find_server_binaries() -> Result<PathBuf, SandboxError> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                // Resolve symlinks so psql and friends are found beside the real binaries.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(dir);
                return Ok(real);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .into_iter()
        .rev()
        .find(|dir| has_tools(dir))
        .ok_or(SandboxError::NoServerBinaries)
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_outgoing_range_and_not_handed_out_twice() {
        let below = ephemeral_start().expect("the kernel's outgoing port range");
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a port")).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(
            ports
                .iter()
                .all(|&p| (LISTEN_PORTS_FROM..below).contains(&p)),
            "{ports:?} not in {LISTEN_PORTS_FROM}..{below}"
        );
        // Each is free: a listener can take it.
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("bind a port handed out");
        }
    }
}
