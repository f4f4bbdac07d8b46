//! The syncer thread's scheduling priority. In `fsync` mode every statement waits for the
//! syncer's fdatasync, and on a busy machine the syncer, woken when the disk is done, then
//! waits its turn for a CPU behind every runnable thread of the host (the proxy's own
//! workers, and on a shared host the database and its clients): at 64 pgbench clients on
//! 2 cores a sync took 1.4 ms on average against 0.15 ms alone. A syncer that runs before
//! them covers more statements per second with the same disk.
//!
//! Raising a thread's priority takes CAP_SYS_NICE or an RLIMIT_NICE that allows it
//! (systemd: `LimitNICE=`, Docker: `--ulimit nice=`); without either the syncer stays at
//! the process's priority, and nothing else changes.

/// The nice value the syncer asks for (lower runs first; the default is 0).
pub(crate) const SYNCER_NICE: i32 = -10;

/// Lowers the calling thread's nice value towards `wanted`, as far as the process may.
/// Returns the nice value the thread runs at, when it could be changed.
pub(crate) fn raise_this_thread(wanted: i32) -> Option<i32> {
    imp::raise_this_thread(wanted)
}

#[cfg(target_os = "linux")]
mod imp {
    pub(super) fn raise_this_thread(wanted: i32) -> Option<i32> {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let tid = libc::id_t::try_from(tid).ok()?;
        // Privileged, or allowed by RLIMIT_NICE (whose soft limit r allows nice 20 - r).
        let floor = nice_floor();
        [wanted, wanted.max(floor)]
            .into_iter()
            .filter(|nice| *nice < 0)
            .find(|nice| set_nice(tid, *nice))
    }

    /// The lowest nice value RLIMIT_NICE lets an unprivileged thread take.
    pub(super) fn nice_floor() -> i32 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit to the pointer given, which lives across it.
        if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } != 0 {
            return 0;
        }
        let allowed = i32::try_from(limit.rlim_cur.min(40)).unwrap_or(0);
        20 - allowed
    }

    /// Sets `tid`'s nice value (a thread's own, on Linux); true if it was allowed.
    fn set_nice(tid: libc::id_t, nice: i32) -> bool {
        // SAFETY: setpriority reads its plain arguments only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn raise_this_thread(_wanted: i32) -> Option<i32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread.
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command's closing parenthesis; nice is field 19 overall.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("nice")
    }

    /// Whether this process holds CAP_SYS_NICE (bit 23 of its effective capabilities).
    fn may_raise_any() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff");
        u64::from_str_radix(caps.trim(), 16).expect("hex") & (1 << 23) != 0
    }

    #[test]
    fn a_raised_thread_runs_at_the_nice_value_it_may_take_and_others_keep_theirs() {
        let before = own_nice();
        let (raised, now) = std::thread::spawn(|| (raise_this_thread(SYNCER_NICE), own_nice()))
            .join()
            .expect("thread");
        let floor = imp::nice_floor();
        let expected = if may_raise_any() {
            Some(SYNCER_NICE)
        } else {
            (floor < 0).then(|| SYNCER_NICE.max(floor))
        };
        assert_eq!(raised, expected, "RLIMIT_NICE floor {floor}");
        assert_eq!(now, raised.unwrap_or(before), "the thread runs at it");
        assert_eq!(own_nice(), before, "only the raised thread changes");
    }
}
