-- A running step's log as it grows: the step runtime ships what its log file
-- gained every second, so `weir logs` can show (and follow) a step that runs
-- on another machine before the whole log is stored as an artifact. Keyed by
-- the attempt and the byte range of the log file each piece covers.
CREATE TABLE step_log_chunks (
    step_run_id TEXT NOT NULL REFERENCES step_runs (id),
    attempt     BIGINT NOT NULL,
    start_byte  BIGINT NOT NULL,
    end_byte    BIGINT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (step_run_id, attempt, start_byte)
);
