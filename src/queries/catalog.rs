//! What the database holds, as the background processes and the SQL-facing glue ask it: the
//! extension's release, whether Connect is in use, and a caller's view of a table.

use pgrx::prelude::*;

use crate::pg::prepared;

type Result<T> = std::result::Result<T, pgrx::spi::Error>;

/// `pg_extension.extversion` of the extension here (None: not installed).
pub fn extension_version() -> Result<Option<String>> {
    // A scalar subquery: always one row, NULL when not installed. Asked before every claim:
    // prepared once.
    prepared::one::<String>("SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'onboarding')", &[])
}

/// Whether Connect is in use here: a table's Connect policy is not `never`, the extension made
/// or follows a Connect account, or a Connect job waits (an explicit `enqueue_connect_account`
/// or `create_account_link`). A Connect-account column alone is not use: the seed's own schema
/// has one, and a platform that only wants customers must need no Connect permission, nor a
/// Stripe account that is a Connect platform.
pub fn connect_in_use() -> Result<bool> {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM onboarding.attachments
                         WHERE connect_account_column IS NOT NULL AND connect_policy <> 'never')
             OR EXISTS (SELECT FROM onboarding.connect_accounts)
             OR EXISTS (SELECT FROM onboarding.stripe_ties WHERE object = 'account')
             OR EXISTS (SELECT FROM onboarding.jobs
                         WHERE kind IN ('create_connect_account', 'delete_connect_account')
                           AND onboarding._is_open(state))",
    )
    .map(|in_use| in_use.unwrap_or(false))
}

/// Whether an attached table makes Accounts v2 (the snapshot then lists `/v2/core/accounts`).
pub fn accounts_v2_in_use() -> Result<bool> {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM onboarding.attachments WHERE stripe_objects = 'accounts_v2')")
        .map(|in_use| in_use.unwrap_or(false))
}

/// Whether the current role may SELECT from `table` (None: could not tell).
pub fn may_select(table: pg_sys::Oid) -> Option<bool> {
    read_bool("SELECT pg_catalog.has_table_privilege($1, 'SELECT')", table)
}

/// Whether row security applies to the current role on `table` (None: could not tell).
pub fn row_security_active(table: pg_sys::Oid) -> Option<bool> {
    read_bool("SELECT pg_catalog.row_security_active($1)", table)
}

/// A boolean about `table`, read with read-only SPI (which works on a standby too).
fn read_bool(query: &str, table: pg_sys::Oid) -> Option<bool> {
    Spi::connect(|client| client.select(query, Some(1), &[table.into()])?.first().get_one::<bool>()).ok().flatten()
}
