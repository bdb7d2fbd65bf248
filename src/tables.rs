//! The extension's one way into application tables. Every statement that reads or writes an
//! attached table — the worker's profile reads and write-backs, Connect conditions, the audits,
//! backfill and reconcile — goes through `onboarding._as_owner`, which runs it as the table's
//! owner in a security-restricted operation (src/pg/owner.rs). Whatever the owner attached to the
//! table (triggers, CHECK constraints, generated columns, index expressions, policies, casts,
//! functions) then runs with the owner's rights, not the worker's superuser or the extension's.
//! The extension's own tables are out of reach from there: the owner has no rights on them.

use pgrx::datum::DatumWithOid;
use pgrx::iter::SetOfIterator;
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::owner;
use crate::pg::prepared;
use crate::queries::catalog;

/// How long a background process waits for a lock on an application table (rows it skips: SKIP
/// LOCKED).
const BACKGROUND_LOCK_TIMEOUT_MS: std::ffi::c_int = 50;

/// Set in the worker and the profile writer: they serve everyone, so they never wait long for
/// one application's lock.
static WAITS_BRIEFLY_FOR_LOCKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called by a background process at start: from then on its statements on application tables
/// wait at most [`BACKGROUND_LOCK_TIMEOUT_MS`] for a lock, and those on the extension's own tables
/// at most half a second, less than `deadlock_timeout`'s default second: DDL on the extension
/// (`DROP EXTENSION`, `ALTER EXTENSION … UPDATE`), which locks its tables one after the other,
/// never deadlocks with a worker that holds one and waits for another (seen on PostgreSQL 18:
/// the DDL was chosen as the victim). The worker's transaction gives up instead, and its work is
/// tried again at the next turn.
pub fn wait_briefly_for_locks() {
    WAITS_BRIEFLY_FOR_LOCKS.store(true, std::sync::atomic::Ordering::Relaxed);
    unsafe {
        pg_sys::SetConfigOption(
            c"lock_timeout".as_ptr(),
            c"500".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
}

/// Runs `statement` (its result columns all text) with `params` as `$1 … $n` (text) as the owner of
/// `table`, and returns its rows. Not for applications: EXECUTE is revoked from PUBLIC.
#[pg_extern(name = "_as_owner", volatile, parallel_unsafe)]
fn as_owner(
    table: pg_sys::Oid,
    statement: &str,
    params: default!(Vec<Option<String>>, "'{}'"),
) -> SetOfIterator<'static, Vec<Option<String>>> {
    // It lowers rights only, but a role that could call it would become any table's owner.
    if !unsafe { pg_sys::superuser() } {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "onboarding._as_owner is for the extension's own functions"
        );
    }
    let owner = owner_of(table);
    // The background processes never wait for an application's lock: a table someone holds (ALTER
    // TABLE, VACUUM FULL, LOCK) fails the statement with 55P03 at once, and the job (or profile
    // write) waits for a later turn.
    let waits_briefly = WAITS_BRIEFLY_FOR_LOCKS.load(std::sync::atomic::Ordering::Relaxed);
    let lock_timeout = if waits_briefly { BACKGROUND_LOCK_TIMEOUT_MS } else { 0 };
    let rows = owner::as_role(owner, gucs::owner_statement_timeout_ms(), lock_timeout, || {
        run(statement, None, &params, |result| {
            let mut rows = Vec::new();
            let Ok(columns) = result.columns() else {
                return Ok(rows); // no RETURNING
            };
            for row in result {
                let mut values = Vec::with_capacity(columns);
                for ordinal in 1..=columns {
                    values.push(row.get::<String>(ordinal)?);
                }
                rows.push(values);
            }
            Ok(rows)
        })
    })
    .unwrap_or_else(|e| error!("onboarding: {e}"));
    SetOfIterator::new(rows)
}

/// Runs `statement` and hands its result to `take`. Read-write SPI (which takes a transaction id)
/// on a primary; read-only on a standby, where there is none to take and only reads can work
/// (profile reads for the application functions, which read load balancers send there).
fn run<R>(
    statement: &str,
    limit: Option<i64>,
    params: &[Option<String>],
    take: impl FnOnce(pgrx::spi::SpiTupleTable) -> Result<R, pgrx::spi::Error>,
) -> Result<R, pgrx::spi::Error> {
    if unsafe { pg_sys::RecoveryInProgress() } {
        Spi::connect(|client| take(client.select(statement, limit, &text_args(params))?))
    } else if limit.is_none() {
        // Planned once per process and statement (the worker runs each table's few statements for
        // every job); PostgreSQL plans again when the table changes, or for another role where row
        // security applies.
        prepared::run_made(statement, &text_args(params), take)
    } else {
        Spi::connect_mut(|client| take(client.update(statement, limit, &text_args(params))?))
    }
}

/// `params` as the text arguments `$1 … $n` of a statement.
fn text_args(params: &[Option<String>]) -> Vec<DatumWithOid<'_>> {
    params.iter().map(|p| p.clone().into()).collect()
}

/// The owner of `table`, from the system cache (a query for it cost twice the switch itself: bench
/// 2c went from 71 to 22 µs per job).
fn owner_of(table: pg_sys::Oid) -> pg_sys::Oid {
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, pg_sys::Datum::from(table));
        if tuple.is_null() {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("onboarding: table with oid {} does not exist", table.to_u32())
            );
            unreachable!("ereport(ERROR) returned")
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

/// The role the application function was called by: `GetOuterUserId()`, the session's current
/// role, which SECURITY DEFINER functions (ours included) do not change.
#[pg_extern(name = "_calling_role", stable, parallel_safe)]
fn calling_role() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// Whether the calling role ([`calling_role`]) may read the profile that `statement` (`$1 … $n`:
/// `params`) selects, checked as that role — its privileges and the table's row-level security —
/// in a security-restricted operation: `visible`, `not found` (it may read the table, no policy
/// hides rows from it, and there is no such row) or `refused` (no SELECT privilege, or a policy
/// may be what hides the row: the answer must not say which).
///
/// A check inside a check answers `refused`: a policy of the profile table that calls an
/// application function (`account_ready` in its `USING`, say) would otherwise recurse until the
/// stack runs out.
#[pg_extern(name = "_caller_can_read", volatile, parallel_unsafe)]
fn caller_can_read(table: pg_sys::Oid, statement: &str, params: default!(Vec<Option<String>>, "'{}'")) -> &'static str {
    let Some(_checking) = CheckingCaller::enter() else {
        return "refused";
    };
    let caller = unsafe { pg_sys::GetOuterUserId() };
    owner::as_role(caller, gucs::owner_statement_timeout_ms(), 0, || {
        let may_select = catalog::may_select(table).unwrap_or(false);
        if !may_select {
            return "refused";
        }
        let found = run(statement, Some(1), &params, |result| Ok(!result.is_empty()))
            .unwrap_or_else(|e| error!("onboarding: {e}"));
        if found {
            return "visible";
        }
        let hidden_by_policy = catalog::row_security_active(table).unwrap_or(true);
        if hidden_by_policy { "refused" } else { "not found" }
    })
}

thread_local! {
    static CHECKING_CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`caller_can_read`] is running in this backend; left on an error too (dropped while unwinding).
struct CheckingCaller;

impl CheckingCaller {
    fn enter() -> Option<CheckingCaller> {
        (!CHECKING_CALLER.replace(true)).then_some(CheckingCaller)
    }
}

impl Drop for CheckingCaller {
    fn drop(&mut self) {
        CHECKING_CALLER.set(false);
    }
}
