-- Webhook endpoints, their deliveries (one per event and endpoint) and every attempt.
CREATE TABLE webhook_endpoints (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL,
    url              TEXT NOT NULL,
    description      TEXT NOT NULL,
    event_types      TEXT NOT NULL,      -- JSON array; empty means every type
    headers          TEXT NOT NULL,      -- JSON object of custom headers
    max_rate         BIGINT NOT NULL,    -- deliveries per second; 0 = no cap
    max_concurrency  BIGINT NOT NULL,    -- 0 = the dispatcher's default
    secret           TEXT NOT NULL,
    previous_secret  TEXT,
    previous_expires_at BIGINT,
    disabled_at      BIGINT,
    disabled_reason  TEXT NOT NULL,
    failing_since    BIGINT,             -- first failed attempt since the last success
    sequence         BIGINT NOT NULL,    -- bumps with every write (etag)
    event_sequence   BIGINT NOT NULL,    -- events emitted about this endpoint (webhook.disabled)
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, id);

-- `origin` is '' for deliveries made from the event stream and the replay's id for replays,
-- so a redelivered event never makes a second delivery while replays can.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    origin          TEXT NOT NULL,
    state           TEXT NOT NULL,       -- pending | succeeded | failed
    attempts        BIGINT NOT NULL,
    single_attempt  SMALLINT NOT NULL,   -- 1 after RetryDelivery: no automatic retries
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL,     -- a dispatcher owns it until then
    last_status     BIGINT NOT NULL,
    last_error      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id, origin)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_org ON webhook_deliveries (org_id, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    id            TEXT PRIMARY KEY,
    delivery_id   TEXT NOT NULL,
    attempted_at  BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    status        BIGINT NOT NULL,
    error         TEXT NOT NULL,
    response_body TEXT NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
