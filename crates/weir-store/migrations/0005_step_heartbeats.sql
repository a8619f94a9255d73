-- The step runtime's own heartbeat while it runs: how a runner (or, with a
-- remote executor, anyone) tells a live step from a lost one.
ALTER TABLE step_runs ADD COLUMN heartbeat_at BIGINT;
