-- Retries: which attempt a step run is on.
ALTER TABLE step_runs ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
-- Liveness: the runner of a running run refreshes heartbeat_at; a running
-- run whose heartbeat is stale has lost its runner.
ALTER TABLE runs ADD COLUMN heartbeat_at BIGINT;
-- Who runs it: "host/pid/start-time" of the runner process, so another
-- command on the same host can tell at once whether that runner is alive.
ALTER TABLE runs ADD COLUMN runner TEXT;
-- Where a step's runtime runs, so a stale step's processes can be stopped.
ALTER TABLE step_runs ADD COLUMN host TEXT;
ALTER TABLE step_runs ADD COLUMN pgid BIGINT;
