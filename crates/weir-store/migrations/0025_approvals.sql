-- Approvals (issue 25): a change to a protected alias or endpoint waits here
-- until someone other than its requester approves (then it is applied) or
-- rejects it. Every request and decision is in the audit log too.
CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    status       TEXT NOT NULL,
    decided_by   TEXT,
    decided_at   BIGINT,
    comment      TEXT
);
CREATE INDEX approvals_status ON approvals (status, requested_at);
