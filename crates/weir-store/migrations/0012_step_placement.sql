-- Where a step attempt runs when it is not a local child process: the
-- executor (`ray`), the address of the cluster it was sent to, the node that
-- ran it and the cluster's own id for the work (a Ray job's submission id).
-- `host`/`pgid` stay for local processes, which the reaper may kill.
ALTER TABLE step_runs ADD COLUMN executor TEXT;
ALTER TABLE step_runs ADD COLUMN executor_address TEXT;
ALTER TABLE step_runs ADD COLUMN node TEXT;
ALTER TABLE step_runs ADD COLUMN job TEXT;
