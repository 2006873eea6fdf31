-- One schema for SQLite and Postgres: TEXT ids, BIGINT epoch-ms times and 0/1 flags,
-- TEXT JSON. Organization ids are slugs; everything else has a prefixed ULID.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    suspended   BIGINT NOT NULL DEFAULT 0,
    rate_limits TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    org_id        TEXT REFERENCES organizations (id),
    platform      BIGINT NOT NULL DEFAULT 0,
    prefix        TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    label         TEXT NOT NULL DEFAULT '',
    scopes        TEXT NOT NULL,
    allowed_cidrs TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_org ON api_keys (org_id, id);

CREATE TABLE domains (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    hostname   TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sequence   BIGINT NOT NULL
);
CREATE UNIQUE INDEX domains_hostname ON domains (org_id, hostname);
CREATE INDEX domains_org ON domains (org_id, id);

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    email       TEXT NOT NULL,
    email_lower TEXT NOT NULL,
    external_id TEXT,
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    active      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    sequence    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (org_id, email_lower);
CREATE UNIQUE INDEX users_external_id ON users (org_id, external_id);
CREATE INDEX users_org ON users (org_id, id);

CREATE TABLE courses (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    sequence    BIGINT NOT NULL
);
CREATE INDEX courses_org ON courses (org_id, id);

CREATE TABLE lessons (
    id        TEXT PRIMARY KEY,
    course_id TEXT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    title     TEXT NOT NULL,
    required  BIGINT NOT NULL,
    position  BIGINT NOT NULL
);
CREATE INDEX lessons_course ON lessons (course_id, position);

CREATE TABLE published_courses (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations (id),
    course_id         TEXT NOT NULL REFERENCES courses (id),
    domain_id         TEXT NOT NULL REFERENCES domains (id),
    enrollment_closed BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    sequence          BIGINT NOT NULL
);
CREATE UNIQUE INDEX published_courses_pair ON published_courses (course_id, domain_id);
CREATE INDEX published_courses_org ON published_courses (org_id, id);
CREATE INDEX published_courses_domain ON published_courses (domain_id);

CREATE TABLE domain_users (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    domain_id  TEXT NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    active     BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sequence   BIGINT NOT NULL
);
CREATE UNIQUE INDEX domain_users_pair ON domain_users (domain_id, user_id);
CREATE INDEX domain_users_org ON domain_users (org_id, id);
CREATE INDEX domain_users_user ON domain_users (user_id);

CREATE TABLE enrollments (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES organizations (id),
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    published_course_id TEXT NOT NULL REFERENCES published_courses (id),
    course_id           TEXT NOT NULL,
    domain_id           TEXT NOT NULL,
    state               TEXT NOT NULL,
    enrolled_at         BIGINT NOT NULL,
    expires_at          BIGINT,
    completed_at        BIGINT,
    score               DOUBLE PRECISION,
    passed              BIGINT,
    deleted_at          BIGINT,
    updated_at          BIGINT NOT NULL,
    sequence            BIGINT NOT NULL
);
-- At most one live enrollment per user and published course.
CREATE UNIQUE INDEX enrollments_live ON enrollments (user_id, published_course_id) WHERE deleted_at IS NULL;
CREATE INDEX enrollments_org ON enrollments (org_id, id);
CREATE INDEX enrollments_published_course ON enrollments (published_course_id);

CREATE TABLE lesson_progress (
    enrollment_id TEXT NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    lesson_id     TEXT NOT NULL,
    state         TEXT NOT NULL,
    score         DOUBLE PRECISION,
    updated_at    BIGINT NOT NULL,
    completed_at  BIGINT,
    PRIMARY KEY (enrollment_id, lesson_id)
);

-- The outbox: written in the same transaction as the change it describes.
CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    type         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    sequence     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    body         TEXT NOT NULL,
    published_at BIGINT
);
CREATE INDEX events_org ON events (org_id, id);
CREATE INDEX events_resource ON events (resource_id, sequence);
CREATE INDEX events_unpublished ON events (id) WHERE published_at IS NULL;

-- Responses of creates sent with a request_id, replayed for 24 h.
CREATE TABLE idempotency (
    org_id      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, request_id)
);
