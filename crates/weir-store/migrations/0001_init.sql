-- Portable SQL: the same file runs on SQLite and PostgreSQL. Ids are text,
-- timestamps are milliseconds since the epoch, JSON documents are text.

CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    spec_file   TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    params_json TEXT NOT NULL,
    status      TEXT NOT NULL,
    git_rev     TEXT,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    error       TEXT
);
CREATE INDEX runs_started ON runs (started_at);

CREATE TABLE step_runs (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    step        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    inputs_json TEXT NOT NULL,
    started_at  BIGINT,
    ended_at    BIGINT,
    exit_code   BIGINT,
    error       TEXT,
    log_digest  TEXT,
    -- External files the step read (path, digest): the roots of lineage.
    sources_json TEXT NOT NULL DEFAULT '[]',
    UNIQUE (run_id, step)
);

CREATE TABLE artifacts (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE step_outputs (
    step_run_id TEXT NOT NULL REFERENCES step_runs (id),
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL REFERENCES artifacts (digest),
    PRIMARY KEY (step_run_id, name)
);

CREATE TABLE metrics (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    step_run_id TEXT NOT NULL REFERENCES step_runs (id),
    key         TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    step        BIGINT NOT NULL,
    ts          BIGINT NOT NULL
);
CREATE INDEX metrics_run ON metrics (run_id, key);

CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE model_versions (
    name          TEXT NOT NULL REFERENCES models (name),
    version       BIGINT NOT NULL,
    digest        TEXT NOT NULL REFERENCES artifacts (digest),
    run_id        TEXT REFERENCES runs (id),
    step_run_id   TEXT REFERENCES step_runs (id),
    metrics_json  TEXT NOT NULL,
    lineage_json  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
