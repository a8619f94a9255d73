-- Serving replicas. `serve_leases` elects the one `weir serve` that runs the
-- rollout controller: a holder keeps its lease by renewing it before it
-- expires, and any replica may take an expired one.
CREATE TABLE serve_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- What each replica's traffic through an endpoint's version was, flushed
-- every second: the controller sums the parts recorded under the endpoint's
-- current revision (its routing) when it judges an interval, and removes
-- them. A part is written once and read once.
CREATE TABLE serve_windows (
    id         TEXT PRIMARY KEY,
    endpoint   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    revision   BIGINT NOT NULL,
    replica    TEXT NOT NULL,
    window_json TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX serve_windows_endpoint ON serve_windows (endpoint, version);
