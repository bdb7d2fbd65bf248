//! Which release of the SQL a database holds, against the release this library was built as.
//!
//! A DBA upgrades by installing the new package, restarting PostgreSQL, then running
//! `ALTER EXTENSION onboarding UPDATE` in each database. Between the restart and the UPDATE the new
//! library meets the old SQL: its workers must not call functions that changed, so they wait
//! (see `worker.rs`, `profile_writer.rs`) until the database's `extversion` is [`LIBRARY_VERSION`];
//! they read it with [`installed`].

use crate::queries::catalog;
use pgrx::prelude::*;

/// The release this library is: `default_version` of the control file it ships with.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The extension as the current database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// `CREATE EXTENSION onboarding` has not run here (or was dropped).
    No,
    /// The SQL is this library's release: the queue may be worked on.
    Current,
    /// Another release's SQL (the library was upgraded, `ALTER EXTENSION … UPDATE` not yet run).
    Other(String),
}

/// What to tell a DBA (and callers of the SQL API) while the SQL is another release's.
pub fn update_needed(installed: &str) -> String {
    format!(
        "the onboarding library is version {LIBRARY_VERSION} but this database has the extension's SQL at \
         version {installed}; no job is touched until you run: ALTER EXTENSION onboarding UPDATE;"
    )
}

/// Reads `pg_extension.extversion` (in the caller's transaction).
pub fn installed() -> Installed {
    let version = catalog::extension_version()
        .unwrap_or_else(|e| error!("onboarding: reading the installed extension version: {e}"));
    match version {
        None => Installed::No,
        Some(v) if v == LIBRARY_VERSION => Installed::Current,
        Some(v) => Installed::Other(v),
    }
}
