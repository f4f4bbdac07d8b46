-- Each node's heartbeat: when it was last seen, its live sessions (JSON, so a session
-- kill reaches the node that holds the session) and how far its audit sink lags.
CREATE TABLE lockbox_nodes (
    id text PRIMARY KEY,
    last_seen bigint NOT NULL,
    live_sessions integer NOT NULL,
    audit_seq bigint,
    audit_sink_lag bigint,
    sessions text NOT NULL
);
