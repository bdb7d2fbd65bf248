//! Every SQL statement the background processes run, one module per concern, each a small typed
//! API over the functions of `sql/` (River's sqlc queries): rows are read by column name into
//! structs, job states cross as `JobState`, and each function runs in the caller's transaction
//! (`pg::transaction::in_transaction`; a failing statement raises an ERROR that it catches).
//! - [`jobs`]: the hot path: promoting the intake, claiming, recording, write-backs, requests;
//! - [`maintenance`]: rescue, retention and the Stripe snapshot;
//! - [`failover`]: the WAL timeline and the sweep after a promotion;
//! - [`inbound`]: the events reader and the profile writer;
//! - [`catalog`]: what the database holds: the extension's release, Connect's use, privileges.
//!
//! Outside `queries/` only `pg/` runs SQL of its own; `tables::as_owner` runs the statements
//! `sql/` writes for an attached table. A new query goes into the module of its concern.

pub mod catalog;
pub mod failover;
pub mod inbound;
pub mod jobs;
pub mod maintenance;
