//! A tokio runtime that is safe to run inside a PostgreSQL backend.
//!
//! PostgreSQL's signal handlers (and pgrx's) touch process-global state such as the latch and
//! may only run on the backend's main thread. The runtime is current-thread, so futures run on
//! the calling (main) thread; the only threads it creates are blocking-pool threads (DNS lookups),
//! and each of those blocks every signal as it starts, so the kernel delivers signals to the main
//! thread only.

use std::io;

/// Builds a current-thread runtime whose helper threads block all signals.
pub fn signal_safe_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
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
        let blocked = rt.block_on(async {
            tokio::task::spawn_blocking(|| unsafe {
                let mut current: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
                [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGINT]
                    .iter()
                    .all(|&s| libc::sigismember(&current, s) == 1)
            })
            .await
            .unwrap()
        });
        assert!(blocked, "a blocking-pool thread left a signal unblocked");
    }
}
