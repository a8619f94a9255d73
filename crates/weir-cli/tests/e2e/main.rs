//! End-to-end tests: the real `weir` binary, run as a user would, against a
//! fresh home directory per test (SQLite and local artifacts by default;
//! PostgreSQL and S3 in `team_backends`). One test binary, many modules.

mod audit;
mod caching;
mod common;
mod costs;
mod datasets;
mod distributed;
mod fanout;
mod flights;
mod lineage;
mod monitoring;
mod observability;
mod onnx;
mod outages;
mod pipelines;
mod preemption;
mod ray;
mod recovery;
mod resilience;
mod retries;
mod rollouts;
mod schedules;
mod scheduling;
mod secrets;
mod team_backends;
mod tls;
mod tokens;
mod training;
