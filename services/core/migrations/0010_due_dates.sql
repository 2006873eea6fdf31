-- Due dates, and the scheduler that turns passed deadlines into events (enrollments::deadlines).
-- `overdue_at` records that `enrollment.overdue` was emitted, so it is emitted once; an expired
-- enrollment is stored with state 'EXPIRED' when `enrollment.expired` is emitted.
ALTER TABLE enrollments ADD COLUMN due_at BIGINT;
ALTER TABLE enrollments ADD COLUMN overdue_at BIGINT;
-- The scheduler's two scans: only rows still waiting for their event are indexed.
CREATE INDEX enrollments_awaiting_overdue ON enrollments (due_at)
    WHERE state = 'ACTIVE' AND deleted_at IS NULL AND due_at IS NOT NULL AND overdue_at IS NULL;
CREATE INDEX enrollments_awaiting_expiry ON enrollments (expires_at)
    WHERE state = 'ACTIVE' AND deleted_at IS NULL AND expires_at IS NOT NULL;
