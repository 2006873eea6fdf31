-- Events are ordered by (txid, id): the id of the transaction that wrote them (Postgres
-- pg_current_xact_id; SQLite, one writer at a time, a counter), then their own. The relay
-- reads only transactions that no running transaction precedes (txid below the snapshot's
-- xmin), so a read never misses an event that commits later, and no event row is ever
-- updated. This replaces the positions the relay used to write into every row.
ALTER TABLE events ADD COLUMN txid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE relay_cursor ADD COLUMN published_txid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE relay_cursor ADD COLUMN published_id TEXT NOT NULL DEFAULT '';
-- What was published sorts at or below the cursor (txid 0); what was not, after it (txid 1).
UPDATE events SET txid = CASE
    WHEN position IS NOT NULL AND position <= (SELECT published_position FROM relay_cursor WHERE id = 1) THEN 0
    ELSE 1 END;
UPDATE relay_cursor SET published_id = COALESCE((SELECT MAX(id) FROM events WHERE txid = 0), '');
DROP INDEX events_unsequenced;
DROP INDEX events_org_position;
ALTER TABLE events DROP COLUMN position;
ALTER TABLE relay_cursor DROP COLUMN published_position;
CREATE INDEX events_order ON events (txid, id);
CREATE INDEX events_org_order ON events (org_id, txid, id);
