//! Faults a test inflicts on its own cluster: an abrupt stop (what a crash or a power loss
//! looks like to clients), a start again on the same port, and a stall (every server
//! process stopped with SIGSTOP, as a hung host would look).

use std::process::Stdio;

use super::{step, PgSandbox, SandboxError};

impl PgSandbox {
    /// `pg_ctl stop -m immediate`: backends are killed without a checkpoint; the cluster
    /// recovers at the next start.
    pub fn crash(&self) -> Result<(), SandboxError> {
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(step("pg_ctl stop", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }

    /// Starts the cluster again, on the port it had, after [`PgSandbox::crash`].
    pub fn start_again(&self) -> Result<(), SandboxError> {
        self.launch()
    }

    /// Stops (`true`) or resumes (`false`) the postmaster and every process it started.
    pub fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| step("postmaster.pid", "no process id on its first line"))?;
        let mut pids = children_of(postmaster);
        pids.push(postmaster);
        for pid in pids {
            // SAFETY: kill(2) with a process id read from the cluster's own files and a
            // valid signal number; it touches no memory of ours.
            let _ = unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }
}

/// The processes whose parent is `parent`, from `/proc/<pid>/stat` (no procps needed).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name is in parentheses and may hold spaces: the fields
                    // after its closing parenthesis are state, then the parent's id.
                    let after = stat.get(stat.rfind(')')? + 1..)?;
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
