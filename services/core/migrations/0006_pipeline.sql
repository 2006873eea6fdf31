-- The relay keeps one cursor instead of marking every event: events at or below
-- `published_position` are confirmed by the bus. It starts where the marks left off.
CREATE TABLE relay_cursor (
    id                 BIGINT PRIMARY KEY,
    published_position BIGINT NOT NULL
);
INSERT INTO relay_cursor (id, published_position)
    SELECT 1, COALESCE((SELECT MAX(position) FROM events WHERE published_at IS NOT NULL), 0);
DROP INDEX events_unpublished;
ALTER TABLE events DROP COLUMN published_at;

-- A delivery's lease is its next_attempt_at: a dispatcher taking it moves that to when its
-- lease runs out (renewed while it holds the delivery), so due rows are never leased ones and
-- a dead dispatcher's deliveries come due again by themselves. `lease_owner` names the
-- holder, so an outcome recorded after the lease was lost does not overwrite the new holder's.
ALTER TABLE webhook_deliveries DROP COLUMN lease_until;
ALTER TABLE webhook_deliveries ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';

-- Bumped by every change to an organization's webhook endpoints: dispatchers cache endpoints
-- (with their opened secrets) and check this once per batch of events.
ALTER TABLE organizations ADD COLUMN webhooks_version BIGINT NOT NULL DEFAULT 0;
