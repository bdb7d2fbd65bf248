//! Latches: how processes here wait, and how they wake each other (a commit wakes the workers, a
//! worker wakes the caller it answered), plus the shutdown flag a wait must notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::prelude::*;

use crate::pg::compat;

/// SIGTERM (smart/fast shutdown, pg_terminate_backend) sets this; pgrx's own flag resets on read.
pub fn shutdown_requested() -> bool {
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// Set while this process commits: a commit may wait for synchronous standbys, and only
/// `ProcDiePending` ends that wait (PostgreSQL's own `die` handling, which pgrx's handler lacks).
static COMMITTING: AtomicBool = AtomicBool::new(false);

/// Replaces pgrx's SIGTERM handler (install after `attach_signal_handlers`): the same flag and
/// latch, and during a commit also what ends a wait for a stalled synchronous standby.
pub fn handle_sigterm_in_commits() {
    unsafe { compat::set_signal_handler(pg_sys::SIGTERM, Some(on_sigterm)) };
}

unsafe extern "C-unwind" fn on_sigterm(_signal: i32) {
    unsafe {
        (&raw mut pg_sys::ShutdownRequestPending).write_volatile(1);
        if COMMITTING.load(Ordering::SeqCst) {
            end_commit_wait();
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// Makes PostgreSQL give up waiting for synchronous standbys: the commit stays committed here,
/// with PostgreSQL's WARNING that the standbys may not have it.
unsafe fn end_commit_wait() {
    unsafe {
        (&raw mut pg_sys::ProcDiePending).write_volatile(1);
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
    }
}

/// Runs `commit`, ending its wait for synchronous standbys if SIGTERM comes (or came already).
/// Afterwards the worker stops the ordinary way, through [`shutdown_requested`]: the pending
/// "die" is withdrawn, so no FATAL cuts the loop short.
pub fn commit_interruptibly(commit: impl FnOnce()) {
    /// Leaves the commit state however the commit ends (an ERROR unwinds through here).
    struct Committing;
    impl Drop for Committing {
        fn drop(&mut self) {
            COMMITTING.store(false, Ordering::SeqCst);
            if shutdown_requested() {
                unsafe { (&raw mut pg_sys::ProcDiePending).write_volatile(0) };
            }
        }
    }
    COMMITTING.store(true, Ordering::SeqCst);
    let _committing = Committing;
    if shutdown_requested() {
        unsafe { end_commit_wait() };
    }
    commit();
}

/// Waits for the latch (or the timeout); returns whether the latch was set. Postmaster death
/// ends the process.
pub fn wait_for_latch(timeout: Duration) -> bool {
    if timeout.is_zero() {
        return take_latch();
    }
    let events = unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i32::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        )
    };
    let woken = events & pg_sys::WL_LATCH_SET as i32 != 0;
    if woken {
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    }
    check_for_interrupts!();
    woken
}

/// Whether the latch was set since last looked at (a commit wake-up, a request, a signal);
/// resets it.
pub fn take_latch() -> bool {
    unsafe {
        let set = (*pg_sys::MyLatch).is_set != 0;
        if set {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        set
    }
}

/// A waiting caller's sleep (requests.rs): up to `timeout`, then the latch is reset whatever
/// woke it, since the caller looks at its slot after every wake-up anyway.
pub fn wait_on_my_latch(timeout: Duration) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

/// This process's PGPROC number, which others use to wake it with [`set_latch_of`].
pub fn my_procno() -> i32 {
    unsafe { compat::procno(pg_sys::MyProc) }
}

/// Sets the latch of the process with this PGPROC number; ignores numbers out of range.
pub fn set_latch_of(procno: i32) {
    unsafe {
        let proc_global = pg_sys::ProcGlobal;
        if procno < 0 || proc_global.is_null() || procno as u32 >= (*proc_global).allProcCount {
            return;
        }
        let target = (*proc_global).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*target).procLatch);
    }
}
