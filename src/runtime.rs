//! Which thread work runs on, now that sessions have threads of their own
//! (`proxy/threads.rs`).
//!
//! A session thread is one worker serving many sessions: whatever a session does there
//! holds up the others until it yields. So two kinds of work leave it:
//! - CPU-heavy steps inside a session (a large batch's inspection, a SCRAM password's
//!   thousands of HMACs) run under [`blocking`], which hands the thread's other sessions to
//!   another thread meanwhile;
//! - tasks that serve everyone or outlive the session (a state store or provisioner
//!   connection's driver, a grant role's drop) are started with [`spawn_control`] on the
//!   main runtime, whose handle each session thread keeps. Started with `tokio::spawn`
//!   from a session, they would stay on its thread for good, and the API and revocations
//!   using them would wait on its sessions.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

/// What a session thread knows of itself.
struct SessionThread {
    /// The main runtime, for work that does not belong on a session thread.
    control: Handle,
    /// Connections on each session thread (`proxy::threads`), and which one this is.
    connections: Arc<[AtomicUsize]>,
    index: usize,
}

thread_local! {
    static SESSION_THREAD: RefCell<Option<SessionThread>> = const { RefCell::new(None) };
}

/// Marks the calling thread as session thread `index` of the server whose main runtime is
/// `control` (called as each session thread starts).
pub(crate) fn enter_session_thread(control: Handle, connections: Arc<[AtomicUsize]>, index: usize) {
    SESSION_THREAD.with(|t| {
        *t.borrow_mut() = Some(SessionThread {
            control,
            connections,
            index,
        });
    });
}

/// On a session thread, how many connections it serves now; `None` elsewhere.
pub(crate) fn session_thread_connections() -> Option<usize> {
    SESSION_THREAD.with(|t| {
        t.borrow().as_ref().map(|here| {
            here.connections
                .get(here.index)
                .map_or(0, |n| n.load(Ordering::Relaxed))
        })
    })
}

/// Spawns `task` on the main runtime when called from a session thread, else on the
/// current runtime (which then is the main one, or a test's).
pub(crate) fn spawn_control<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match SESSION_THREAD.with(|t| t.borrow().as_ref().map(|here| here.control.clone())) {
        Some(control) => control.spawn(task),
        None => tokio::spawn(task),
    }
}

/// Runs `work`, a step that takes a while on the CPU, so that the other tasks of the
/// current worker go on elsewhere meanwhile (`block_in_place`) where the runtime allows it:
/// a multi-threaded runtime's, as session threads are. Elsewhere (a `current_thread`
/// runtime, no runtime) it simply runs.
pub(crate) fn blocking<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    BLOCKING_CALLS.with(|calls| calls.set(calls.get() + 1));
    let movable =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if movable {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
thread_local! {
    static BLOCKING_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Tests only: how many times the calling thread went through [`blocking`].
#[cfg(test)]
pub(crate) fn blocking_calls() -> u64 {
    BLOCKING_CALLS.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a runtime of one worker, as a session thread is: while one task is in
    /// `blocking`, another task of that worker still runs (here it is what the first waits
    /// for, so without the hand-over the wait could only time out).
    #[test]
    fn blocking_work_lets_the_workers_other_tasks_go_on() {
        let session = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tell, told) = std::sync::mpsc::channel::<u32>();
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = session.spawn({
            let inside = inside.clone();
            async move {
                blocking(|| {
                    inside.store(true, std::sync::atomic::Ordering::SeqCst);
                    told.recv_timeout(std::time::Duration::from_secs(10))
                })
            }
        });
        // Sends only once the first task is inside `blocking`, from the same single worker.
        let other = session.spawn(async move {
            while !inside.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            let _ = tell.send(7);
        });
        let got = session.block_on(async {
            other.await.expect("ran");
            waiting.await.expect("ran")
        });
        assert_eq!(got, Ok(7));
        session.shutdown_background();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_spawned_from_a_session_thread_runs_on_the_main_runtime() {
        let main = Handle::current();
        let session = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("session")
            .on_thread_start({
                let main = main.clone();
                move || enter_session_thread(main.clone(), Arc::new([AtomicUsize::new(1)]), 0)
            })
            .enable_all()
            .build()
            .expect("runtime");
        let (there, spawned_from_there) = session
            .spawn(async {
                let here = std::thread::current().name().map(str::to_owned);
                let spawned = spawn_control(async {
                    (
                        std::thread::current().name().map(str::to_owned),
                        session_thread_connections(),
                    )
                });
                (here, spawned.await.expect("ran"))
            })
            .await
            .expect("ran");
        assert_eq!(there.as_deref(), Some("session"));
        let (name, on_session) = spawned_from_there;
        assert_ne!(
            name.as_deref(),
            Some("session"),
            "it ran on the session thread"
        );
        assert_eq!(on_session, None);
        session.shutdown_background();
    }

    #[test]
    fn blocking_work_runs_where_no_thread_can_take_over() {
        let lone = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(lone.block_on(async { blocking(|| 41 + 1) }), 42);
        assert_eq!(blocking(|| 7), 7);
    }
}
