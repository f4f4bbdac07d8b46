//! What a session leaves to run once its relay is over, beside the other sessions (so that
//! shutdown waits for it too): the reaper that makes sure a dropped session's backend is
//! gone, and the farewell that tells a slow-reading client why its session ended.

use tracing::Instrument;

use super::gate::Slot;
use super::reaper::Reaper;
use super::relay::Farewell;

#[derive(Default)]
pub(crate) struct Aftermath {
    reaper: Option<Reaper>,
    farewell: Option<Farewell>,
    /// The client's connection slot, held while the farewell holds the client's socket.
    slot: Option<Slot>,
    /// The session's span, for what the farewell logs.
    span: Option<tracing::Span>,
}

impl Aftermath {
    pub(crate) fn new(reaper: Option<Reaper>, farewell: Option<Farewell>) -> Self {
        Aftermath {
            reaper,
            farewell,
            ..Aftermath::default()
        }
    }

    /// `None` when there is nothing left to do.
    pub(crate) fn into_work(self) -> Option<Self> {
        (self.reaper.is_some() || self.farewell.is_some()).then_some(self)
    }

    /// Keeps `slot` taken for as long as the client's socket is open. Called in the
    /// session's span, which the farewell goes on logging in.
    pub(crate) fn holding(mut self, slot: Slot) -> Self {
        if self.farewell.is_some() {
            self.slot = Some(slot);
            self.span = Some(tracing::Span::current());
        }
        self
    }

    /// Runs the reaper and delivers the farewell at the same time: a client slow to read
    /// its last words must not hold back the end of the backend.
    pub(crate) async fn run(self) {
        let reap = async {
            if let Some(reaper) = self.reaper {
                reaper.run().await;
            }
        };
        let farewell = async {
            if let Some(farewell) = self.farewell {
                farewell
                    .deliver()
                    .instrument(self.span.unwrap_or_else(tracing::Span::none))
                    .await;
            }
            drop(self.slot);
        };
        tokio::join!(reap, farewell);
    }
}
