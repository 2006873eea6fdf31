-- The relay gives each committed event a position, in the order it sees them commit; the
-- positions never leave gaps for readers, so WatchEvents can resume from any event.
ALTER TABLE events ADD COLUMN position BIGINT;
DROP INDEX events_unpublished;
CREATE INDEX events_unsequenced ON events (id) WHERE position IS NULL;
CREATE INDEX events_unpublished ON events (position) WHERE published_at IS NULL;
CREATE INDEX events_org_position ON events (org_id, position);
CREATE INDEX events_created ON events (created_at);
