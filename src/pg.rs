//! PostgreSQL plumbing the rest of the extension stands on. Nothing here knows about jobs,
//! Stripe or requests:
//! - [`compat`]: what differs between the PostgreSQL majors it is built for (every `cfg` on one);
//! - [`transaction`]: running a piece of work in its own transaction, errors caught;
//! - [`latch`]: waiting on this process's latch, setting another's, noticing shutdown;
//! - [`owner`]: running a table owner's code with the owner's rights only;
//! - [`prepared`]: statements prepared once per process and reused;
//! - [`processes`]: shared memory set up at preload, and the registry of the launcher's and the
//!   workers' PGPROC numbers through which others wake them;
//! - [`replication`]: WAL positions, the timeline, and how far the standbys have the WAL.

pub mod compat;
pub mod latch;
pub mod owner;
pub mod prepared;
pub mod processes;
pub mod replication;
pub mod transaction;
