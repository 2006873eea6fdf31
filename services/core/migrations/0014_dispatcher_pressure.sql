-- Backpressure: a dispatcher that is behind for want of capacity of its own (its attempts
-- wait in it, and it is short of CPU) sets behind_until a little ahead, again and again
-- while that lasts; the API paces its writes while any live dispatcher's is ahead of now.
-- It lapses by itself, so a dispatcher that catches up (or dies) writes nothing more.
ALTER TABLE dispatcher_liveness ADD COLUMN behind_until BIGINT NOT NULL DEFAULT 0;
