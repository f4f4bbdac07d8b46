//! Who gets a farewell pass (patience with a slow reader): ends a client could bring about
//! itself take at most half of them, and so do any one engineer's sessions, so a client ending its own
//! sessions over and over while reading slowly cannot make another engineer's revoke or
//! expiry farewell hurry.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::farewell::tests::farewell;
use crate::proxy::aftermath::Aftermath;
use crate::proxy::gate::{take_slot, Limits};
use crate::proxy::Registry;

struct Passes {
    registry: Arc<Registry>,
    limits: Limits,
    /// Aftermaths holding their passes, with the client end of each socket.
    held: Vec<(Aftermath, std::net::TcpStream)>,
}

impl Passes {
    fn new(max_connections: usize) -> Passes {
        Passes {
            registry: Arc::new(Registry::default()),
            limits: Limits {
                max_connections,
                failed_login_limit: 10,
                failed_login_window: Duration::from_secs(60),
            },
            held: Vec::new(),
        }
    }

    /// A session of `engineer` ends (`provoked` or not) with a farewell to a client that
    /// has a socket to watch; whether the farewell got a pass (is patient).
    fn end(&mut self, engineer: &str, provoked: bool) -> bool {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (socket, _) = listener.accept().expect("accept");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut farewell = farewell(TcpStream::from_std(socket).expect("socket"), b"FATAL");
        farewell.provoked = provoked;
        farewell.engineer = engineer.to_owned();
        let slot = take_slot(&self.registry, &self.limits).expect("slot");
        let after = Aftermath::new(None, None, Some(farewell))
            .into_work()
            .expect("work")
            .releasing(slot, self.limits.max_connections);
        let patient = after.farewell_is_patient() == Some(true);
        self.held.push((after, peer));
        patient
    }

    fn held(&self) -> usize {
        self.registry.gate.farewells()
    }
}

#[tokio::test]
async fn provoked_farewells_take_no_more_than_half_the_passes() {
    let mut passes = Passes::new(4);
    assert!(passes.end("g1", true));
    assert!(passes.end("g2", true));
    assert!(!passes.end("g3", true), "a third provoked farewell hurries");
    assert_eq!(passes.held(), 2);
    // The other half is kept for ends the client did not choose.
    assert!(passes.end("g4", false));
    assert!(passes.end("g5", false));
    assert!(!passes.end("g6", false), "every pass is taken");
    assert_eq!(passes.held(), 4);
    passes.held.clear();
    assert_eq!(passes.held(), 0, "dropped farewells give their passes back");
}

/// The review's finding: an engineer may revoke their own grant (or see its expiry
/// coming), which is no provoked end, so its farewells drew on every pass. One engineer's
/// sessions now hold at most half, whatever ended them and however many grants they came
/// through (a later review revoked two grants of one engineer, each holding half).
#[tokio::test]
async fn one_engineers_sessions_take_no_more_than_half_the_passes() {
    let mut passes = Passes::new(4);
    assert!(passes.end("eve", false));
    assert!(passes.end("eve", false));
    assert!(
        !passes.end("eve", false),
        "eve's third farewell hurries, from whichever grant"
    );
    assert!(passes.end("bob", false), "bob's revoke farewell is patient");
    assert!(passes.end("bob", false));
    assert_eq!(passes.held(), 4);
    // An engineer's count goes down as their farewells end.
    passes.held.clear();
    assert!(passes.end("eve", false));
}

/// Half is rounded up: a deployment with one or three connections still gives a provoked
/// end (the server's own, a DBA's terminate) a patient farewell while passes are free.
#[tokio::test]
async fn half_is_rounded_up() {
    let mut one = Passes::new(1);
    assert!(one.end("g1", true));
    let mut three = Passes::new(3);
    assert!(three.end("g1", true));
    assert!(three.end("g2", true));
    assert!(!three.end("g3", true));
    assert!(three.end("g4", false));
}
