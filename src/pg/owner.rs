//! Running a table owner's code with the owner's rights only: the way PostgreSQL itself runs
//! VACUUM, ANALYZE, REINDEX and REFRESH MATERIALIZED VIEW since CVE-2020-25695.

use pgrx::pg_sys;

/// Runs `work` as `role` in a security-restricted operation, with `search_path` pinned to
/// `pg_catalog, pg_temp`. Whatever the role's objects run meanwhile (triggers, CHECK constraints,
/// generated columns, index expressions, policies, casts, functions in a condition) runs with that
/// role's rights, cannot `SET ROLE` or `SET SESSION AUTHORIZATION`, create temporary objects or
/// leave settings behind (every setting changed inside is undone on the way out).
///
/// On an error the (sub)transaction's abort restores the user and the settings, as it does for
/// PostgreSQL's own callers; `work` is not expected to catch errors.
pub fn as_role<R>(role: pg_sys::Oid, work: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
    let result = work();
    unsafe {
        // false: every change made inside is rolled back, SET without LOCAL too (as matview.c does).
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    result
}
