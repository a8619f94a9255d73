-- What each version of an endpoint answered, interval by interval, as the
-- rollout controller judged it: the history behind the dashboard's request
-- rate, error rate, latency and drift charts. The replicas' live counts
-- (serve_windows) are read once and removed; this is what remains of them.
-- Old rows are removed as new ones come (see Store::record_interval).
CREATE TABLE deployment_intervals (
    endpoint   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT NOT NULL,
    weight     BIGINT NOT NULL,
    requests   BIGINT NOT NULL,
    errors     BIGINT NOT NULL,
    stats_json TEXT NOT NULL
);
CREATE INDEX deployment_intervals_endpoint ON deployment_intervals (endpoint, ended_at);
