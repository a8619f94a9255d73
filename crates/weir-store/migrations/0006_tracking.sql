-- Experiment tracking as the MLflow REST API sees it. Experiment ids are
-- integers (shown as strings, "0" is Default); run ids are 32 hex digits.
-- Pipeline runs and step runs get a tracking run of the same id.

CREATE TABLE experiments (
    experiment_id     BIGINT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_update_time  BIGINT NOT NULL
);
INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time)
VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', 0, 0);

CREATE TABLE experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES experiments (experiment_id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE tracking_runs (
    run_id          TEXT PRIMARY KEY,
    experiment_id   BIGINT NOT NULL REFERENCES experiments (experiment_id),
    name            TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    start_time      BIGINT,
    end_time        BIGINT,
    lifecycle_stage TEXT NOT NULL,
    artifact_uri    TEXT NOT NULL,
    deleted_time    BIGINT
);
CREATE INDEX tracking_runs_experiment ON tracking_runs (experiment_id, start_time);

CREATE TABLE run_params (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_tags (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Every logged point. NaN is stored as is_nan with value 0; infinities as
-- the largest finite doubles (what MLflow's SQL store does).
CREATE TABLE run_metrics (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    ts     BIGINT NOT NULL,
    step   BIGINT NOT NULL,
    is_nan BIGINT NOT NULL
);
CREATE INDEX run_metrics_history ON run_metrics (run_id, key, step, ts);

-- The point with the largest (step, timestamp, value) per run and key: what
-- search filters and sorts on.
CREATE TABLE latest_metrics (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    ts     BIGINT NOT NULL,
    step   BIGINT NOT NULL,
    is_nan BIGINT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX latest_metrics_key ON latest_metrics (key, value);

-- Datasets a run used (runs/log-inputs), as the JSON the client sent.
CREATE TABLE run_inputs (
    run_id       TEXT NOT NULL REFERENCES tracking_runs (run_id),
    digest       TEXT NOT NULL,
    name         TEXT NOT NULL,
    dataset_json TEXT NOT NULL,
    tags_json    TEXT NOT NULL,
    PRIMARY KEY (run_id, name, digest)
);

-- The artifact proxy: MLflow addresses artifacts by path, the artifact store
-- by content; this maps one to the other.
CREATE TABLE artifact_paths (
    path       TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- MLflow 3 logged models: a model's files (under its artifact_uri) with its
-- params and tags, produced by a run (run_outputs) or used by one.
CREATE TABLE logged_models (
    model_id          TEXT PRIMARY KEY,
    experiment_id     BIGINT NOT NULL REFERENCES experiments (experiment_id),
    name              TEXT NOT NULL,
    artifact_uri      TEXT NOT NULL,
    status            TEXT NOT NULL,
    status_message    TEXT,
    creator_id        TEXT,
    model_type        TEXT,
    source_run_id     TEXT,
    lifecycle_stage   TEXT NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_updated_time BIGINT NOT NULL
);
CREATE INDEX logged_models_experiment ON logged_models (experiment_id, name);

CREATE TABLE logged_model_params (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- direction: 'output' (the run produced the model) or 'input' (it used it).
CREATE TABLE run_models (
    run_id    TEXT NOT NULL REFERENCES tracking_runs (run_id),
    model_id  TEXT NOT NULL REFERENCES logged_models (model_id),
    direction TEXT NOT NULL,
    step      BIGINT NOT NULL,
    PRIMARY KEY (run_id, model_id, direction)
);
