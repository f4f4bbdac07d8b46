-- Admin center sign-ins, shared by the nodes so a browser stays signed in whichever node
-- the balancer picks. id_hash is the SHA-256 of the cookie's id: the table never holds a
-- value a browser could present. body: what the sign-in carries (MFA, CSRF token, the
-- API key's hash); flash: the one-time message for the next page.
CREATE TABLE lockbox_web_sessions (
    id_hash text PRIMARY KEY,
    user_name text NOT NULL,
    expires_at bigint NOT NULL,
    body text NOT NULL,
    flash text
);
CREATE INDEX lockbox_web_sessions_user ON lockbox_web_sessions (user_name, expires_at);
CREATE INDEX lockbox_web_sessions_expiry ON lockbox_web_sessions (expires_at);
