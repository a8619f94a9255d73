-- Datasets: named tables whose versions are the distinct contents a step
-- produced, each with its schema and profile (issue 23). A version is
-- written with the step's outputs, in the same transaction.
CREATE TABLE datasets (
    name            TEXT PRIMARY KEY,
    created_at      BIGINT NOT NULL,
    last_updated_at BIGINT NOT NULL
);

CREATE TABLE dataset_versions (
    name         TEXT NOT NULL REFERENCES datasets (name),
    version      BIGINT NOT NULL,
    -- The table's content: the same content is the same version.
    digest       TEXT NOT NULL REFERENCES artifacts (digest),
    output       TEXT NOT NULL,
    step_run_id  TEXT NOT NULL REFERENCES step_runs (id),
    run_id       TEXT NOT NULL REFERENCES runs (id),
    row_count    BIGINT NOT NULL,
    column_count BIGINT NOT NULL,
    -- weir_data::Profile as JSON (schema, per-column statistics).
    profile_json TEXT NOT NULL,
    -- Schema changes against the version before it.
    changes_json TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, digest)
);
CREATE INDEX dataset_versions_step_run ON dataset_versions (step_run_id);
