-- Logged metric points, packed: one row per run, key and request instead of
-- one per point. A 1,000-point log-batch of 10 keys writes 10 rows, not
-- 1,000 rows and 1,000 index entries; a history is read back by one index
-- range and ordered in memory. Points written before this migration stay in
-- run_metrics, which history still reads.
CREATE TABLE metric_chunks (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    points BYTEA NOT NULL
);
CREATE INDEX metric_chunks_run_key ON metric_chunks (run_id, key);
