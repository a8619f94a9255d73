-- Hyper-parameter studies: one per tuned step of a run, a row per trial. A
-- resumed run reads its step's trials back and goes on with the study; the
-- outputs of complete trials are artifacts, so the best one survives.
CREATE TABLE study_trials (
    run_id            TEXT NOT NULL REFERENCES runs (id),
    step              TEXT NOT NULL,
    number            BIGINT NOT NULL,
    state             TEXT NOT NULL,
    params_json       TEXT NOT NULL,
    value             DOUBLE PRECISION,
    intermediate_json TEXT NOT NULL,
    metrics_json      TEXT NOT NULL,
    outputs_json      TEXT,
    error             TEXT,
    tracking_run_id   TEXT,
    started_at        BIGINT NOT NULL,
    ended_at          BIGINT,
    PRIMARY KEY (run_id, step, number)
);
