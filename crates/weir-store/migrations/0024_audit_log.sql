-- The audit log (issue 25): every change to what Weir governs (runs, model
-- versions and aliases, deployments, schedules, tokens), appended in the
-- change's own transaction. Rows are never updated or deleted by Weir; each
-- row's hash covers its content and the hash of the row before it, so an
-- edited, removed or reordered row breaks the chain (`weir audit --verify`).
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    before_json TEXT NOT NULL,
    after_json  TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
