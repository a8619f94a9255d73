-- One model registry for pipelines and MLflow clients. A version is either a
-- Weir model file (digest) registered by a pipeline, or MLflow-format files
-- at a source URI (models:/m-..., runs:/...); the table is rebuilt because
-- SQLite cannot drop the NOT NULL on digest in place.

ALTER TABLE models ADD COLUMN description TEXT;
ALTER TABLE models ADD COLUMN last_updated_at BIGINT;
UPDATE models SET last_updated_at = created_at;

CREATE TABLE model_tags (
    name  TEXT NOT NULL REFERENCES models (name),
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE model_aliases (
    name    TEXT NOT NULL REFERENCES models (name),
    alias   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, alias)
);

CREATE TABLE model_versions_v2 (
    name            TEXT NOT NULL REFERENCES models (name),
    version         BIGINT NOT NULL,
    digest          TEXT REFERENCES artifacts (digest),
    source          TEXT NOT NULL,
    run_id          TEXT,
    step_run_id     TEXT,
    model_id        TEXT,
    metrics_json    TEXT NOT NULL,
    lineage_json    TEXT NOT NULL,
    status          TEXT NOT NULL,
    stage           TEXT NOT NULL,
    description     TEXT,
    user_id         TEXT,
    created_at      BIGINT NOT NULL,
    last_updated_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
INSERT INTO model_versions_v2 (name, version, digest, source, run_id, step_run_id, model_id,
    metrics_json, lineage_json, status, stage, description, user_id, created_at, last_updated_at)
SELECT name, version, digest, 'weir-model:' || digest, run_id, step_run_id, NULL,
    metrics_json, lineage_json, 'READY', 'None', NULL, NULL, created_at, created_at
FROM model_versions;
DROP TABLE model_versions;
ALTER TABLE model_versions_v2 RENAME TO model_versions;
CREATE INDEX model_versions_run ON model_versions (run_id);

CREATE TABLE model_version_tags (
    name    TEXT NOT NULL,
    version BIGINT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (name, version, key)
);
