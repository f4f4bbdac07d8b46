-- Kills of sessions that live on another node: a notification alone is lost while that
-- node's listener reconnects (a restarted state database, a cut connection), so the order
-- is kept here too, and each node's once-a-second reconcile carries out and clears its own.
-- ordered_at: milliseconds since the epoch.
CREATE TABLE lockbox_session_kills (
    session_id text PRIMARY KEY,
    node text NOT NULL,
    reason text NOT NULL,
    by_its_engineer boolean NOT NULL,
    ordered_at bigint NOT NULL
);
CREATE INDEX lockbox_session_kills_node ON lockbox_session_kills (node);
