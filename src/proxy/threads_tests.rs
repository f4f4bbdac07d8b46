use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::oneshot;

use super::*;

/// The name of the thread a future placed on `handle` runs on.
async fn thread_of(handle: &Handle) -> String {
    handle
        .spawn(async { std::thread::current().name().unwrap_or("").to_owned() })
        .await
        .expect("the task ran")
}

#[tokio::test]
async fn each_session_goes_to_the_thread_with_the_fewest_and_leaves_it_when_over() {
    let threads = SessionThreads::start(3).expect("threads start");
    let (first, a) = threads.place();
    let first = thread_of(first).await;
    let (second, b) = threads.place();
    let second = thread_of(second).await;
    let (third, c) = threads.place();
    let third = thread_of(third).await;
    let mut names = vec![first.clone(), second.clone(), third.clone()];
    names.sort();
    assert_eq!(
        names,
        ["lockbox-sess-0", "lockbox-sess-1", "lockbox-sess-2"]
    );

    // The second session's thread is now the one with fewest: the next goes there.
    drop(b);
    let (next, d) = threads.place();
    assert_eq!(thread_of(next).await, second);
    // With every thread at one again, the tie goes to the first.
    let (tied, e) = threads.place();
    assert_eq!(thread_of(tied).await, "lockbox-sess-0");
    drop((a, c, d, e));
}

#[tokio::test]
async fn a_socket_accepted_elsewhere_is_served_on_its_session_thread() {
    let threads = SessionThreads::start(1).expect("threads start");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = tokio::spawn(async move {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"ping").await.expect("write");
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await.expect("read");
        reply
    });
    let (accepted, _) = listener.accept().await.expect("accept");
    let accepted = accepted.into_std().expect("out of this reactor");
    let (thread, _placed) = threads.place();
    let served = thread.spawn(async move {
        let mut tcp = TcpStream::from_std(accepted).expect("into the session thread's reactor");
        let mut got = [0u8; 4];
        tcp.read_exact(&mut got).await.expect("read");
        tcp.write_all(b"pong").await.expect("write");
        (got, std::thread::current().name().map(str::to_owned))
    });
    let (got, name) = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("served in time")
        .expect("the task ran");
    assert_eq!(&got, b"ping");
    assert_eq!(name.as_deref(), Some("lockbox-sess-0"));
    assert_eq!(&client.await.expect("client"), b"pong");
}

#[tokio::test]
async fn stopping_ends_the_sessions_still_on_the_threads() {
    let threads = SessionThreads::start(2).expect("threads start");
    let (thread, _placed) = threads.place();
    let (dropped, on_drop) = oneshot::channel::<()>();
    struct Guard(Option<oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(tell) = self.0.take() {
                let _ = tell.send(());
            }
        }
    }
    let guard = Guard(Some(dropped));
    thread.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    threads.stop();
    // The runtime went with its thread, and the session with it: its drop reports.
    let told = tokio::time::timeout(Duration::from_secs(10), on_drop).await;
    assert!(told.is_ok(), "the session outlived its thread");
}

#[test]
fn a_session_alone_on_its_thread_may_lead_a_sync_and_one_with_neighbours_may_not() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Started from a runtime, as the server starts them: its handle is the threads' main one.
    let threads = {
        let _main = runtime.enter();
        SessionThreads::start(1).expect("threads start")
    };
    let may_lead_there = |thread: &Handle| {
        runtime
            .block_on(thread.spawn(async { crate::audit::may_lead_sync_here() }))
            .expect("the task ran")
    };
    let (thread, alone) = threads.place();
    let thread = thread.clone();
    assert!(may_lead_there(&thread), "alone on its thread");
    let (_, neighbour) = threads.place();
    assert!(
        !may_lead_there(&thread),
        "a neighbour would wait on the sync"
    );
    drop(neighbour);
    assert!(may_lead_there(&thread), "alone again");
    drop(alone);
    // A runtime of one thread that runs everything else too never may.
    assert!(!runtime.block_on(async { crate::audit::may_lead_sync_here() }));
}
