-- The state of lockbox nodes sharing one PostgreSQL database: the same tables as the
-- embedded SQLite store, with the request's version as a column for compare-and-set.
CREATE TABLE lockbox_requests (
    id text PRIMARY KEY,
    status text NOT NULL,
    engineer text NOT NULL,
    db text NOT NULL,
    created_at bigint NOT NULL,
    version bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX lockbox_requests_status ON lockbox_requests (status);

CREATE TABLE lockbox_settings (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE lockbox_export_schedules (
    name text PRIMARY KEY,
    watermark bigint NOT NULL,
    created_at bigint NOT NULL,
    body text NOT NULL
);
CREATE TABLE lockbox_export_runs (
    id bigserial PRIMARY KEY,
    schedule text NOT NULL,
    status text NOT NULL,
    body text NOT NULL
);
CREATE INDEX lockbox_export_runs_schedule ON lockbox_export_runs (schedule, id);

-- claimed_by/claimed_until: the node delivering it and until when; another node takes a
-- delivery over once the claim lapsed (its node died mid-delivery).
CREATE TABLE lockbox_notifications (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    target text NOT NULL,
    event text NOT NULL,
    request_id text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at bigint NOT NULL,
    last_error text,
    created_at bigint NOT NULL,
    delivered_at bigint,
    payload text NOT NULL,
    claimed_by text,
    claimed_until bigint
);
CREATE INDEX lockbox_notifications_due ON lockbox_notifications (status, next_attempt_at);
