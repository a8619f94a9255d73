-- Service level objectives (issue 24): each replica's endpoint requests per
-- minute, added to as it flushes; budgets and burn rates sum the replicas.
-- Rows older than the longest SLO window allowed are dropped as new ones come.
CREATE TABLE slo_minutes (
    endpoint TEXT NOT NULL,
    minute   BIGINT NOT NULL,
    replica  TEXT NOT NULL,
    total    BIGINT NOT NULL,
    failed   BIGINT NOT NULL,
    slow     BIGINT NOT NULL,
    PRIMARY KEY (endpoint, minute, replica)
);
CREATE INDEX slo_minutes_minute ON slo_minutes (minute);
