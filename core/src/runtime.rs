//! A tokio runtime that is safe to run inside a PostgreSQL backend.
//!
//! PostgreSQL's signal handlers (and pgrx's) touch process-global state such as the latch and
//! may only run on the backend's main thread, and only the main thread may call into PostgreSQL.
//! The runtime has one worker thread, where the Stripe calls run (so they go out on time while
//! the main thread is in a transaction), plus blocking-pool threads for DNS lookups; every one of
//! them blocks all signals as it starts, so the kernel delivers signals to the main thread only.
//! The futures spawned on it must not touch PostgreSQL: they get plain data and return plain data.

use std::io;

/// Builds a runtime with one worker thread, whose threads block all signals.
pub fn signal_safe_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .enable_time()
        .max_blocking_threads(4)
        .on_thread_start(block_all_signals_on_this_thread)
        .build()
}

fn block_all_signals_on_this_thread() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_threads_block_signals() {
        let rt = signal_safe_runtime().unwrap();
        let all_blocked = || unsafe {
            let mut current: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
            [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGINT, libc::SIGURG]
                .iter()
                .all(|&s| libc::sigismember(&current, s) == 1)
        };
        let (on_blocking_pool, on_worker) = rt.block_on(async {
            let pool = tokio::task::spawn_blocking(all_blocked).await.unwrap();
            let worker = tokio::spawn(async move { all_blocked() }).await.unwrap();
            (pool, worker)
        });
        assert!(on_blocking_pool, "a blocking-pool thread left a signal unblocked");
        assert!(on_worker, "the worker thread left a signal unblocked");
    }
}
