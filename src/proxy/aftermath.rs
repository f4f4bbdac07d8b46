//! What a session leaves to run once its relay is over, beside the other sessions (so that
//! shutdown waits for it too): the cancel of a backend the proxy ended mid-query and the
//! reaper that makes sure it is gone, and, at the same time, the farewell that tells the
//! client why its session ended (a slow reader must not hold back either).

use tracing::Instrument;

use super::gate::{FarewellPass, Slot};
use super::reaper::Reaper;
use super::relay::{CancelKey, Farewell};
use super::upstream;

#[derive(Default)]
pub(crate) struct Aftermath {
    /// The backend's cancel key, when the proxy ended the session (a query may run).
    cancel: Option<CancelKey>,
    reaper: Option<Reaper>,
    farewell: Option<Farewell>,
    /// Held while the farewell is patient with a slow reader.
    pass: Option<FarewellPass>,
    /// The session's span, for what is logged after it.
    span: Option<tracing::Span>,
    /// The grant's place of a session whose backend may outlive it: given back once the
    /// reaper is done (see `places`).
    place: Option<super::places::PlaceHold>,
}

impl Aftermath {
    pub(crate) fn new(
        cancel: Option<CancelKey>,
        reaper: Option<Reaper>,
        farewell: Option<Farewell>,
    ) -> Self {
        Aftermath {
            cancel,
            reaper,
            farewell,
            ..Aftermath::default()
        }
    }

    /// Keeps the session's place until the backend is seen gone.
    pub(crate) fn holding(mut self, place: Option<super::places::PlaceHold>) -> Self {
        self.place = place;
        self
    }

    /// `None` when there is nothing left to do.
    pub(crate) fn into_work(self) -> Option<Self> {
        (self.cancel.is_some() || self.reaper.is_some() || self.farewell.is_some()).then_some(self)
    }

    /// Gives the connection's slot back; the farewell is patient with a slow reader only
    /// while fewer than `max_farewells` are (see [`Slot::into_farewell_pass`]), or half as
    /// many (rounded up) for an end the client could have brought about itself, and while
    /// its engineer's sessions hold fewer than half: a client that ends its own sessions
    /// over and over while reading slowly (with a setting, a row limit, or by revoking its
    /// own grants, one after another) holds at most half the passes, and the rest stay for
    /// those whose access ended under them. Counted per engineer, not per grant: an engineer
    /// may revoke their own requests, and with two grants held two halves (an attack
    /// review's finding). Called in the session's span, which what follows goes on logging in.
    pub(crate) fn releasing(mut self, slot: Slot, max_farewells: usize) -> Self {
        self.span = Some(tracing::Span::current());
        if let Some(farewell) = self.farewell.as_mut().filter(|f| f.is_patient()) {
            let half = max_farewells.div_ceil(2);
            let max = if farewell.is_provoked() {
                half
            } else {
                max_farewells
            };
            self.pass = slot.into_farewell_pass(max, Some((farewell.engineer(), half)));
            if self.pass.is_none() {
                farewell.hurry();
            }
        }
        self
    }

    /// Whether the farewell, if any, waits on a slow reader.
    #[cfg(test)]
    pub(crate) fn farewell_is_patient(&self) -> Option<bool> {
        self.farewell.as_ref().map(Farewell::is_patient)
    }

    /// Cancels and reaps the backend, and delivers the farewell at the same time: a
    /// database that takes no new connection (the cancel's) must not delay the FATAL, and a
    /// client slow to read it must not hold back the end of the backend.
    pub(crate) async fn run(self) {
        let span = self.span.unwrap_or_else(tracing::Span::none);
        let backend = async {
            if let Some(key) = self.cancel {
                // The backend notices the closed socket once its query stops.
                if let Err(e) =
                    upstream::send_cancel(&key.host, key.port, key.pid, key.secret).await
                {
                    tracing::warn!(error = %e, "could not cancel the upstream query");
                }
            }
            if let Some(reaper) = self.reaper {
                reaper.run().await;
            }
            drop(self.place);
        };
        let farewell = async {
            if let Some(farewell) = self.farewell {
                farewell.deliver().await;
            }
            drop(self.pass);
        };
        tokio::join!(backend.instrument(span.clone()), farewell.instrument(span));
    }
}
