-- Monitoring (issue 23). The prediction log: requests `weir serve` sampled,
-- with what it predicted, as Parquet segments in the artifact store; the
-- newest are kept within a byte budget per target (Store::add_segment).
CREATE TABLE prediction_segments (
    id         TEXT PRIMARY KEY,
    -- The endpoint that routed the requests, or the model served directly.
    target     TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    digest     TEXT NOT NULL REFERENCES artifacts (digest),
    bytes      BIGINT NOT NULL,
    row_count  BIGINT NOT NULL,
    first_at   BIGINT NOT NULL,
    last_at    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX prediction_segments_target ON prediction_segments (target, last_at);

-- True labels sent to an endpoint's feedback route, joined to logged
-- predictions by request id for online accuracy.
CREATE TABLE prediction_feedback (
    target      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (target, request_id)
);
CREATE INDEX prediction_feedback_received ON prediction_feedback (target, received_at);

-- What each monitor concluded at each check, and the alerts it fired with
-- what each action did (webhook attempts, the retraining run).
CREATE TABLE monitor_checks (
    id          TEXT PRIMARY KEY,
    monitor     TEXT NOT NULL,
    target      TEXT NOT NULL,
    checked_at  BIGINT NOT NULL,
    -- ok | breached | not_enough_data | fired
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    report_json TEXT NOT NULL
);
CREATE INDEX monitor_checks_monitor ON monitor_checks (monitor, checked_at);

CREATE TABLE monitor_alerts (
    id           TEXT PRIMARY KEY,
    monitor      TEXT NOT NULL,
    target       TEXT NOT NULL,
    fired_at     BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    actions_json TEXT NOT NULL
);
CREATE INDEX monitor_alerts_monitor ON monitor_alerts (monitor, fired_at);
