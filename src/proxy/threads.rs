//! Session threads: each runs a runtime of its own, and a session lives on one of them from
//! its first byte to its last.
//!
//! Why not the process's multi-worker runtime: there, a socket's readiness found by one
//! worker wakes another that is parked, to look for work to steal. A proxy's statement is a
//! ping-pong of small reads and writes, so that wake-up (a futex call and the other thread's
//! trip through the scheduler, mostly finding nothing to steal) came about once per
//! statement, on the statement's path. Here each thread waits in its own `epoll_wait` for its
//! own sessions' sockets, and nothing crosses between threads per statement except what has
//! to (an `fsync` mode record's durability, told by the syncer). Sessions are placed on the
//! thread with the fewest, once, at accept.
//!
//! A session's client socket is taken out of the accepting runtime's reactor and put into
//! its thread's (`into_std` / `from_std`); everything the session opens itself (its upstream
//! connection, its timers) is its thread's from the start.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::{Handle, Runtime};

/// The session threads of one proxy. Dropping it (or [`SessionThreads::stop`]) ends the
/// threads; sessions still on them are dropped with their runtime.
pub(crate) struct SessionThreads {
    threads: Vec<SessionThread>,
    /// Sessions placed on each thread and not yet over (also read by `/metrics`).
    live: LiveSessions,
}

struct SessionThread {
    handle: Handle,
    /// Taken when the threads stop.
    runtime: Mutex<Option<Runtime>>,
}

/// How many sessions each session thread has now, by thread.
pub(crate) type LiveSessions = Arc<[AtomicUsize]>;

/// A connection's place on its session thread, held for as long as its session runs.
pub(crate) struct Placed {
    live: LiveSessions,
    thread: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        if let Some(live) = self.live.get(self.thread) {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl SessionThreads {
    /// Starts `count` threads (at least one), each with its own runtime (I/O and timers).
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let count = count.max(1);
        // Work that is not a session's goes back to the runtime starting the threads.
        let control = Handle::try_current().ok();
        let live: LiveSessions = (0..count).map(|_| AtomicUsize::new(0)).collect();
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            // On failure the threads already started are stopped as `threads` drops.
            threads.push(SessionThread::start(index, control.clone(), live.clone())?);
        }
        Ok(Self { threads, live })
    }

    /// The live session counts, by thread.
    pub(crate) fn live(&self) -> LiveSessions {
        self.live.clone()
    }

    /// The thread with the fewest live sessions (the first of them on a tie), and the
    /// session's place there.
    pub(crate) fn place(&self) -> (&Handle, Placed) {
        let (index, (thread, live)) = self
            .threads
            .iter()
            .zip(self.live.iter())
            .enumerate()
            .min_by_key(|(_, (_, live))| live.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("at least one session thread is started"));
        live.fetch_add(1, Ordering::Relaxed);
        let placed = Placed {
            live: self.live.clone(),
            thread: index,
        };
        (&thread.handle, placed)
    }

    /// Ends every thread's runtime without waiting for it (so it may be called from async
    /// code); sessions still on them are dropped.
    pub(crate) fn stop(&self) {
        self.threads.iter().for_each(SessionThread::stop);
    }
}

impl Drop for SessionThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SessionThread {
    /// Ends the runtime without waiting for it (a runtime dropped in async code would
    /// panic); a second call finds it gone.
    fn stop(&self) {
        let runtime = match self.runtime.lock() {
            Ok(mut runtime) => runtime.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    /// A runtime of one worker: nothing to steal from or for, so no other thread is woken
    /// when a socket turns ready. It is tokio's multi-threaded kind all the same, so that a
    /// session parsing a very large batch (`block_in_place`) hands the thread's other
    /// sessions to a thread of its own meanwhile, instead of holding them up.
    fn start(index: usize, control: Option<Handle>, live: LiveSessions) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("lockbox-sess-{index}"))
            .on_thread_start(move || {
                if let Some(control) = &control {
                    crate::runtime::enter_session_thread(control.clone(), live.clone(), index);
                }
            })
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }
}

#[cfg(test)]
#[path = "threads_tests.rs"]
mod tests;
