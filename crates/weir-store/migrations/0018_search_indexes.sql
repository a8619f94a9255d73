-- Searches at 100,000 runs (the dashboard's runs table and run page).
--
-- An equality on a tag or param (`tags.mlflow.parentRunId = '...'`, a run's
-- child runs) starts from the key's matching rows instead of visiting every
-- run of the experiment. The value is indexed by its first 200 characters:
-- PostgreSQL's B-tree entries stop near 2.7 kB and tags (notes) and params
-- may be longer; the search compares the prefix, then the whole value.
CREATE INDEX run_tags_key_value ON run_tags (key, substr(value, 1, 200));
CREATE INDEX run_params_key_value ON run_params (key, substr(value, 1, 200));

-- The experiments that hold runs mirrored from pipelines, whose start times
-- come from the pipeline's records. A search of experiments without them
-- orders by tracking_runs.start_time alone, which its index gives newest
-- first: a page reads a page of runs instead of sorting all of them.
CREATE TABLE pipeline_experiments (
    experiment_id BIGINT PRIMARY KEY REFERENCES experiments (experiment_id)
);
INSERT INTO pipeline_experiments (experiment_id)
    SELECT DISTINCT r.experiment_id FROM runs wp JOIN tracking_runs r ON r.run_id = wp.id;
