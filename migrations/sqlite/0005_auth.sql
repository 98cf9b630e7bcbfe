-- Access control (README "Security"): bearer tokens, the key that signs player URLs, and the audit
-- log. The Postgres migration of the same number defines the same tables.

-- An access token. Clients send `vs_<id>_<secret>`; only a SHA-256 digest of the secret is kept.
-- The secret is 256 random bits, so a fast hash is enough: it can be leaked, never guessed.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,                  -- the public `<id>` part: 16 lower-case hex digits
    name          TEXT NOT NULL DEFAULT '',          -- the operator's label
    secret_sha256 BLOB NOT NULL,                     -- SHA-256 of the `<secret>` part (32 bytes)
    admin         BOOLEAN NOT NULL DEFAULT FALSE,    -- may do everything: tokens, audit, every stream
    streams       TEXT NOT NULL DEFAULT '',          -- '*' or comma-separated stream UUIDs ('' for admins)
    actions       TEXT NOT NULL DEFAULT '',          -- comma-separated: live, archive, export, manage
    created_at_us INTEGER NOT NULL,
    expires_at_us INTEGER,                           -- NULL: never expires
    created_by    TEXT                               -- id of the admin token that made it; NULL: the CLI
);

-- Keys for HMAC-SHA-256 signatures of player URLs. The newest row signs; an older row still
-- verifies until `valid_until_us` (the grace period chosen at `video-server key rotate`).
CREATE TABLE signing_keys (
    id             INTEGER PRIMARY KEY,              -- 1, 2, ...: the highest is the current key
    secret         BLOB NOT NULL,                    -- 32 random bytes
    created_at_us  INTEGER NOT NULL,
    valid_until_us INTEGER                           -- NULL while current; set when replaced
);

-- Who did what: every change, every media session and every refused request. Written in batches
-- off the request path; rows older than [auth] audit_retention_days are deleted.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,    -- keyset cursor of GET /api/v1/audit (newest first)
    at_us      INTEGER NOT NULL,                     -- when the request was answered
    token_id   TEXT,                                 -- the token used, or that signed the URL; NULL: none
    credential TEXT NOT NULL
               CHECK (credential IN ('none', 'token', 'signed', 'bootstrap')),
    client     TEXT NOT NULL,                        -- the client key: 'token:<id>' or 'ip:<address>'
    action     TEXT NOT NULL,                        -- what the route needs: live, archive, export, manage, create, admin, read
    stream_id  TEXT,                                 -- UUID of the stream concerned; NULL: none
    route      TEXT NOT NULL,                        -- method and route template: 'DELETE /api/v1/streams/{id}'
    status     INTEGER NOT NULL                      -- HTTP status answered (101: a WebSocket session opened)
);
CREATE INDEX audit_at ON audit (at_us);
