-- Serving endpoints and their rollouts. One row per endpoint holds the whole
-- rollout state (so a restarted server continues where it was); `revision`
-- lets the server's controller and the CLI change it without losing each
-- other's writes. Every change appends an event.

CREATE TABLE deployments (
    endpoint          TEXT PRIMARY KEY,
    model             TEXT NOT NULL,
    stable_version    BIGINT,
    candidate_version BIGINT,
    strategy          TEXT NOT NULL,
    steps_json        TEXT NOT NULL,
    step_index        BIGINT NOT NULL,
    weight            BIGINT NOT NULL,
    phase             TEXT NOT NULL,
    analysis_json     TEXT NOT NULL,
    reason            TEXT NOT NULL,
    revision          BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE deployment_events (
    endpoint TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    event    TEXT NOT NULL,
    detail   TEXT NOT NULL,
    PRIMARY KEY (endpoint, seq)
);
