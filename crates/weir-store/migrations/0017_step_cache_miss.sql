-- Why a step ran instead of reusing cached outputs ("with.l2 changed",
-- "no earlier run", "--no-cache"), as the runner decided it when the step
-- started: the pipeline page shows it beside each step that missed.
ALTER TABLE step_runs ADD COLUMN cache_miss TEXT;
