-- Trials of a study on a cluster run as jobs of their own: the job's id (also
-- the fencing token its outcome is recorded under) and the node that ran it.
ALTER TABLE study_trials ADD COLUMN job TEXT;
ALTER TABLE study_trials ADD COLUMN node TEXT;
