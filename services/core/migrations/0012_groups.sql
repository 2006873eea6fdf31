-- Groups, their members and assignments, and the operations that fan membership out into
-- enrollments (groups/ and operations.rs).
CREATE TABLE user_groups (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    sequence    BIGINT NOT NULL
);
CREATE INDEX user_groups_org ON user_groups (org_id, id);

-- What members are enrolled in: a published course (`pub_…`) or a learning path (`pth_…`).
CREATE TABLE group_assignments (
    group_id    TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    target_id   TEXT NOT NULL,
    due_at      BIGINT,
    assigned_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, target_id)
);
CREATE INDEX group_assignments_target ON group_assignments (target_id);

-- Removed members are kept (removed_at), to record that the group no longer grants them.
-- `operation_id` is the operation that enrolls a member added by AddGroupMembers.
CREATE TABLE group_members (
    id           TEXT PRIMARY KEY,
    group_id     TEXT NOT NULL REFERENCES user_groups (id),
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at     BIGINT NOT NULL,
    removed_at   BIGINT,
    operation_id TEXT
);
CREATE UNIQUE INDEX group_members_live ON group_members (group_id, user_id) WHERE removed_at IS NULL;
CREATE INDEX group_members_operation ON group_members (operation_id, user_id) WHERE operation_id IS NOT NULL;

-- Background fan-out. A replica holds one while `lease_until` is ahead; each batch commits
-- its enrollments with the new `cursor` (the last member handled), so a crash loses at most
-- the batch in flight, which the next holder redoes without duplicates.
CREATE TABLE operations (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations (id),
    kind           TEXT NOT NULL,
    group_id       TEXT NOT NULL,
    target_id      TEXT,
    members_total  BIGINT NOT NULL,
    members_done   BIGINT NOT NULL,
    members_failed BIGINT NOT NULL,
    first_error    TEXT,
    cursor         TEXT NOT NULL,
    lease_owner    TEXT,
    lease_until    BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    done_at        BIGINT
);
CREATE INDEX operations_running ON operations (created_at) WHERE done_at IS NULL;
