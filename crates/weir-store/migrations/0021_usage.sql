-- Resource accounting and cost (issue 24). One row per step attempt
-- (trial = -1) and per trial: what it used and what that cost at the
-- prices in force when it ended.
CREATE TABLE resource_usage (
    step_run_id   TEXT NOT NULL REFERENCES step_runs (id),
    attempt       BIGINT NOT NULL,
    trial         BIGINT NOT NULL,
    run_id        TEXT NOT NULL REFERENCES runs (id),
    step          TEXT NOT NULL,
    host          TEXT NOT NULL,
    status        TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT NOT NULL,
    wall_ms       BIGINT NOT NULL,
    cpu_ms        BIGINT NOT NULL,
    max_rss_bytes BIGINT NOT NULL,
    -- What it reserved: it pays for the larger of this and what it used.
    cpus          DOUBLE PRECISION NOT NULL,
    memory_bytes  BIGINT NOT NULL,
    gpus          BIGINT NOT NULL,
    bytes_read    BIGINT NOT NULL,
    bytes_written BIGINT NOT NULL,
    spot          BIGINT NOT NULL,
    -- 0 for a trial run inside its step's process: the step attempt's row
    -- already holds its usage, so only billed rows add up to a run's cost.
    billed        BIGINT NOT NULL,
    cost          DOUBLE PRECISION NOT NULL,
    cost_json     TEXT NOT NULL,
    PRIMARY KEY (step_run_id, attempt, trial)
);
CREATE INDEX resource_usage_run ON resource_usage (run_id);
CREATE INDEX resource_usage_ended ON resource_usage (ended_at);

-- What each `weir serve` replica has used and answered, refreshed while it
-- runs: an endpoint's cost per 1,000 inferences is its replicas' cost over
-- their requests.
CREATE TABLE serve_usage (
    replica     TEXT PRIMARY KEY,
    targets     TEXT NOT NULL,
    host        TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    cpu_ms      BIGINT NOT NULL,
    rss_bytes   BIGINT NOT NULL,
    requests    BIGINT NOT NULL,
    cost        DOUBLE PRECISION NOT NULL
);
