-- A run's params, tags, latest metrics, inputs and models, encoded as one
-- text (see tracking::RunData), so a search page reads one column per run
-- instead of querying five tables. NULL means stale: every write to a run's
-- data sets it to NULL in the same transaction, and the next search that
-- returns the run rebuilds it.
ALTER TABLE tracking_runs ADD COLUMN data_cache TEXT;

-- Filters on a metric read the run and NaN flag from the index alone
-- instead of visiting each matching row.
DROP INDEX latest_metrics_key;
CREATE INDEX latest_metrics_key ON latest_metrics (key, value, is_nan, run_id);
