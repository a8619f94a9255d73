-- Schedules (issue 24): pipelines run on a cron schedule by `weir scheduler`
-- (one active per store, by the lease in serve_leases), with what each
-- firing did.
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    spec_file    TEXT NOT NULL,
    cron         TEXT NOT NULL,
    off_peak     TEXT,
    params_json  TEXT NOT NULL,
    catch_up     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    -- The time of the last firing dealt with (run or skipped); the next
    -- firing is the schedule's first time after it.
    last_fire_at BIGINT NOT NULL
);

CREATE TABLE schedule_firings (
    id            TEXT PRIMARY KEY,
    schedule      TEXT NOT NULL REFERENCES schedules (name),
    scheduled_for BIGINT NOT NULL,
    fired_at      BIGINT NOT NULL,
    -- started, succeeded, failed, skipped
    outcome       TEXT NOT NULL,
    run_id        TEXT,
    detail        TEXT NOT NULL
);
CREATE INDEX schedule_firings_schedule ON schedule_firings (schedule, fired_at);
