//! Whether the database's SQL is this library's release: after a package upgrade and a restart,
//! the worker touches nothing until `ALTER EXTENSION onboarding UPDATE` (said once at WARNING;
//! requests are refused meanwhile, inserts keep queueing).

use std::time::Duration;

use pgrx::prelude::*;

use crate::pg::latch::wait_for_latch;
use crate::pg::transaction::in_transaction;
use crate::release::{self, Installed};
use crate::requests;
use crate::worker::{SqlRelease, Worker};

/// While the database's SQL is another release's, how often to look for `ALTER EXTENSION … UPDATE`
/// (its commit also wakes the workers).
const UPDATE_POLL: Duration = Duration::from_secs(1);

/// While waiting for that update, the shortest gap between two looks (wake-ups come per commit).
const UPDATE_RECHECK: Duration = Duration::from_millis(50);

impl Worker {
    /// Waits until the next look: every insert's commit sets the latch, so at most every
    /// [`UPDATE_RECHECK`], not once per commit (requests are refused within that time).
    pub(super) fn wait_for_update() {
        if wait_for_latch(UPDATE_POLL) {
            std::thread::sleep(UPDATE_RECHECK);
        }
    }

    /// Looks at the database's extension release while it is not known to be this library's.
    /// Returns Some(true) when the worker may go on, Some(false) while it must wait for
    /// `ALTER EXTENSION onboarding UPDATE` (warned once, requests refused meanwhile), None when
    /// the extension is not installed here.
    pub(super) fn check_sql_release(&mut self, database_name: &str) -> Option<bool> {
        let installed = match in_transaction("reading the extension version", release::installed) {
            Ok(installed) => installed,
            Err(_) => return Some(false), // logged; look again after the pause
        };
        match installed {
            Installed::No => None,
            Installed::Current => {
                if let SqlRelease::Behind(old) = &self.sql_release {
                    log!(
                        "onboarding: database \"{database_name}\" now has version {} (was {old}); worker resumes",
                        release::LIBRARY_VERSION
                    );
                }
                self.sql_release = SqlRelease::Current;
                Some(true)
            }
            Installed::Other(version) => {
                let message = release::update_needed(&version);
                if self.sql_release != SqlRelease::Behind(version.clone()) {
                    ereport!(
                        WARNING,
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("onboarding: in database \"{database_name}\", {message}"),
                        "Run ALTER EXTENSION onboarding UPDATE; in this database (as its owner or a superuser). \
                         Inserted profiles keep queueing meanwhile and are provisioned right after."
                    );
                    self.sql_release = SqlRelease::Behind(version);
                }
                for request in requests::take_new() {
                    requests::fail(request.ticket, &message);
                }
                Some(false)
            }
        }
    }
}
