-- Exact caching: the key a step run was executed under, the components the
-- key was computed from (to explain a miss), and the run it reused on a hit.
ALTER TABLE step_runs ADD COLUMN cache_key TEXT;
ALTER TABLE step_runs ADD COLUMN cache_components TEXT;
ALTER TABLE step_runs ADD COLUMN cached_from TEXT;
CREATE INDEX step_runs_cache_key ON step_runs (cache_key);
