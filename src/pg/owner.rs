//! Running a table owner's code with the owner's rights only: the way PostgreSQL itself runs
//! VACUUM, ANALYZE, REINDEX and REFRESH MATERIALIZED VIEW since CVE-2020-25695.

use std::ffi::c_int;

use pgrx::pg_sys;

/// utils/timeout.h of PostgreSQL 15, which pgrx's bindings leave out.
mod timeout {
    use std::ffi::c_int;

    /// `STATEMENT_TIMEOUT` of `enum TimeoutId` (registered for every backend and worker by
    /// InitPostgres; when it fires, the running statement fails with 57014).
    pub const STATEMENT_TIMEOUT: c_int = 3;

    unsafe extern "C-unwind" {
        pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
        pub fn disable_timeout(id: c_int, keep_indicator: bool);
        pub fn get_timeout_active(id: c_int) -> bool;
    }
}

/// A statement timeout armed for the work of [`as_role`] when none was running; disarmed when
/// the work ends, on an error too (dropped while unwinding).
struct Deadline {
    armed: bool,
}

impl Deadline {
    fn arm(delay_ms: c_int) -> Deadline {
        let armed = delay_ms > 0 && !unsafe { timeout::get_timeout_active(timeout::STATEMENT_TIMEOUT) };
        if armed {
            unsafe { timeout::enable_timeout_after(timeout::STATEMENT_TIMEOUT, delay_ms) };
        }
        Deadline { armed }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if self.armed {
            unsafe { timeout::disable_timeout(timeout::STATEMENT_TIMEOUT, false) };
        }
    }
}

/// Runs `work` as `role` in a security-restricted operation, with `search_path` pinned to
/// `pg_catalog, pg_temp`. Whatever the role's objects run meanwhile (triggers, CHECK constraints,
/// generated columns, index expressions, policies, casts, functions in a condition) runs with that
/// role's rights, cannot `SET ROLE` or `SET SESSION AUTHORIZATION`, create temporary objects or
/// leave settings behind (every setting changed inside is undone on the way out).
///
/// `timeout_ms` (when positive and no statement timeout is running already) bounds the work: past
/// it, the running statement fails with 57014 ("canceling statement due to statement timeout").
/// `lock_timeout_ms` (when positive) bounds each wait for a lock: past it, 55P03.
///
/// On an error the (sub)transaction's abort restores the user and the settings, as it does for
/// PostgreSQL's own callers; `work` is not expected to catch errors.
pub fn as_role<R>(role: pg_sys::Oid, timeout_ms: c_int, lock_timeout_ms: c_int, work: impl FnOnce() -> R) -> R {
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
    if lock_timeout_ms > 0 {
        let value = std::ffi::CString::new(lock_timeout_ms.to_string()).expect("digits");
        unsafe {
            pg_sys::set_config_option(
                c"lock_timeout".as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let deadline = Deadline::arm(timeout_ms);
    let result = work();
    drop(deadline);
    unsafe {
        // false: every change made inside is rolled back, SET without LOCAL too (as matview.c does).
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    result
}
