-- The web console (docs/console.md). Sign-in links and sessions are stored by the SHA-256 of
-- their token, never the token itself. Both carry the authority they grant: an organization
-- and scopes, and (when a key minted the link, or signed in) that key, whose revocation or
-- expiry ends the session. A link with no key came from the operator's CLI.
CREATE TABLE console_links (
    token_hash TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    key_id     TEXT REFERENCES api_keys (id),
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE console_sessions (
    token_hash   TEXT PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    key_id       TEXT REFERENCES api_keys (id),
    scopes       TEXT NOT NULL,
    -- Who signed in, as the console shows it: the prefix of the key, or that a link was used.
    actor        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    ended_at     BIGINT
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
CREATE INDEX console_links_expiry ON console_links (expires_at);

-- Who created, changed or revoked an organization's keys and webhooks (the console's
-- Activity page, `ListActivity`): events carry no actor, these rows do.
CREATE TABLE activity (
    id        TEXT PRIMARY KEY,
    org_id    TEXT NOT NULL REFERENCES organizations (id),
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target_id TEXT NOT NULL,
    summary   TEXT NOT NULL
);
CREATE INDEX activity_org ON activity (org_id, id);
