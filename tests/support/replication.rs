#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! A primary [`Cluster`] with one streaming standby made by `pg_basebackup -R`, for the failover
//! tests: waiting for the standby, stalling its walreceiver (SIGSTOP), crashing the primary and
//! promoting the standby. Dropping a [`Replicated`] resumes a stalled walreceiver and removes both
//! servers, so a failed assertion leaves no stopped process or running server behind.

use std::cell::Cell;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use super::cluster::{Cluster, SIGCONT, SIGKILL, SIGSTOP, send_signal};
use super::wait::wait_for;

/// The standby's `application_name`, as `synchronous_standby_names` and
/// `onboarding.wait_for_standbys` name it.
pub const STANDBY_NAME: &str = "standby1";

/// What the primary needs to stream. Short timeouts: a stalled standby is dropped by the
/// walsender within seconds (a fast shutdown waits for the walsenders until then), and a dropped
/// one reconnects at once.
const STREAMING_SETTINGS: &str = "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n\
    wal_sender_timeout = '3s'\nwal_receiver_status_interval = '1s'\nwal_retrieve_retry_interval = '200ms'\n";

pub struct Replicated {
    pub primary: Cluster,
    pub standby: Cluster,
    /// The walreceiver's pid while it is SIGSTOPped.
    stalled_walreceiver: Cell<Option<i32>>,
}

impl Replicated {
    /// Starts a primary with `primary_settings` (plus what streaming needs) and a standby cloned
    /// from it, whose copy of postgresql.conf gets `standby_settings` appended: what must differ
    /// once it is promoted (no `synchronous_standby_names` naming itself, say).
    pub fn start(name: &str, primary_settings: &str, standby_settings: &str) -> Replicated {
        let primary = Cluster::start(&format!("{name}-primary"), &format!("{STREAMING_SETTINGS}{primary_settings}"));
        // The guard exists before anything else can fail, so both servers are cleaned up.
        let pair = Replicated {
            primary,
            standby: Cluster::unstarted(&format!("{name}-standby")),
            stalled_walreceiver: Cell::new(None),
        };
        pair.allow_replication();
        pair.clone_standby(standby_settings);
        pair
    }

    /// initdb's trust file already has this line; written anyway so the test does not depend on it.
    fn allow_replication(&self) {
        append(&self.primary.data_dir.join("pg_hba.conf"), "host replication all 127.0.0.1/32 trust\n");
        self.primary.connect().batch_execute("SELECT pg_reload_conf()").expect("reload pg_hba.conf");
    }

    fn clone_standby(&self, standby_settings: &str) {
        let (primary, standby) = (&self.primary, &self.standby);
        let _ = std::fs::remove_dir_all(&standby.data_dir);
        primary.run(
            Command::new(primary.bin("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-D"])
                .arg(&standby.data_dir)
                .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]),
            true,
        );
        let _ = std::fs::remove_file(standby.log_path()); // the primary's, copied along
        standby.append_settings(&format!(
            "port = {}\nunix_socket_directories = '{}'\n{standby_settings}",
            standby.port,
            standby.data_dir.display()
        ));
        // -R wrote a primary_conninfo without application_name to postgresql.auto.conf, read last.
        append(
            &standby.data_dir.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}'\n",
                primary.port
            ),
        );
        standby.start_again();
    }

    /// Waits until the primary streams to the standby (as a synchronous standby if `sync`).
    pub fn wait_streaming(&self, sync: bool) -> Result<(), Failed> {
        let mut db = self.primary.connect();
        wait_for("the standby to stream", Duration::from_secs(30), || {
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication
                      WHERE application_name = $1 AND state = 'streaming' AND (NOT $2 OR sync_state = 'sync')",
                    &[&STANDBY_NAME, &sync],
                )
                .ok()?;
            (row.get::<_, i64>(0) == 1).then_some(())
        })
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    pub fn wait_caught_up(&self) -> Result<(), Failed> {
        let lsn: String = self.primary.connect().query_one("SELECT pg_current_wal_lsn()::text", &[])?.get(0);
        let mut db = self.standby.connect();
        wait_for("the standby to catch up", Duration::from_secs(30), || {
            let row = db.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).ok()?;
            row.get::<_, Option<bool>>(0).unwrap_or(false).then_some(())
        })
    }

    /// SIGSTOPs the standby's walreceiver: from now on the standby receives nothing.
    pub fn stall_walreceiver(&self) -> Result<i32, Failed> {
        let mut db = self.standby.connect();
        let pid = wait_for("the walreceiver to stream", Duration::from_secs(30), || {
            db.query_opt("SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[])
                .ok()
                .flatten()
                .map(|row| row.get::<_, i32>(0))
        })?;
        if !send_signal(pid, SIGSTOP) {
            return Err(format!("cannot SIGSTOP the walreceiver {pid}").into());
        }
        self.stalled_walreceiver.set(Some(pid));
        Ok(pid)
    }

    /// SIGCONTs a stalled walreceiver (nothing if none is).
    pub fn resume_walreceiver(&self) {
        if let Some(pid) = self.stalled_walreceiver.take() {
            send_signal(pid, SIGCONT);
        }
    }

    /// Kills a stalled walreceiver: WAL the primary had sent into its socket while it was stopped
    /// would otherwise still reach the standby, which a standby cut off from a dead primary never
    /// gets. (SIGTERM is not enough: resumed in the middle of its receive loop, it writes what it
    /// has read before it looks at its interrupts.) The standby's postmaster takes it for a crash
    /// and restarts recovery from the WAL the standby had flushed.
    fn cut_off_walreceiver(&self) {
        if let Some(pid) = self.stalled_walreceiver.take() {
            send_signal(pid, SIGKILL);
        }
    }

    /// Crashes the primary (`-m immediate`), cuts a stalled walreceiver off, promotes the standby
    /// and waits until it accepts writes. Returns how long the promotion took.
    pub fn fail_over(&self) -> Result<Duration, Failed> {
        self.primary.crash();
        self.cut_off_walreceiver();
        let started = Instant::now();
        self.standby.pg_ctl(&["promote", "-w", "-t", "60"], None);
        let mut db = self.standby.connect();
        wait_for("the promoted standby to leave recovery", Duration::from_secs(30), || {
            let row = db.query_one("SELECT pg_is_in_recovery()", &[]).ok()?;
            (!row.get::<_, bool>(0)).then_some(())
        })?;
        Ok(started.elapsed())
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        self.resume_walreceiver();
        self.standby.discard();
        self.primary.discard();
    }
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap_or_default();
    content.push_str(text);
    std::fs::write(path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
