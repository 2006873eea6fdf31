-- Learning paths: an ordered list of published courses, and users enrolled in a path
-- (learning_paths.rs). A path enrollment's progress is derived from the user's course
-- enrollments, so it is never stale.
CREATE TABLE learning_paths (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    sequence    BIGINT NOT NULL
);
CREATE INDEX learning_paths_org ON learning_paths (org_id, id);

CREATE TABLE learning_path_courses (
    path_id             TEXT NOT NULL REFERENCES learning_paths (id) ON DELETE CASCADE,
    published_course_id TEXT NOT NULL REFERENCES published_courses (id),
    position            BIGINT NOT NULL,
    PRIMARY KEY (path_id, published_course_id)
);
CREATE INDEX learning_path_courses_course ON learning_path_courses (published_course_id);

CREATE TABLE path_enrollments (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    path_id      TEXT NOT NULL REFERENCES learning_paths (id),
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state        TEXT NOT NULL,
    enrolled_at  BIGINT NOT NULL,
    due_at       BIGINT,
    completed_at BIGINT,
    deleted_at   BIGINT,
    updated_at   BIGINT NOT NULL,
    sequence     BIGINT NOT NULL
);
CREATE UNIQUE INDEX path_enrollments_live ON path_enrollments (path_id, user_id) WHERE deleted_at IS NULL;
CREATE INDEX path_enrollments_org ON path_enrollments (org_id, id);
CREATE INDEX path_enrollments_user ON path_enrollments (user_id) WHERE deleted_at IS NULL;
