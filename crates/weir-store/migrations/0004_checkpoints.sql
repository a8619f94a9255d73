-- Preemptible steps: the last checkpoint directory saved for a step run,
-- restored at the start of its next attempt (a retry or a resume).
ALTER TABLE step_runs ADD COLUMN checkpoint_digest TEXT;
