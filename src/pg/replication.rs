//! Where this server's WAL stands and how far its standbys have it: what a worker needs to call
//! Stripe only for commits that a failover cannot lose, and to notice that it runs on a promoted
//! standby.

pub use onboarding_core::standby_wait::WalPosition;
use pgrx::prelude::*;

/// The end of this backend's last commit record: a commit is safe from failover once the
/// standbys that matter have flushed WAL up to here. (Each commit sets it; reading it after a
/// transaction that wrote nothing gives the previous one's.)
pub fn last_commit_end() -> WalPosition {
    unsafe { pg_sys::XactLastCommitEnd }
}

/// The WAL timeline this server writes on; it grows by one at every promotion.
pub fn timeline() -> u32 {
    unsafe { pg_sys::GetWALInsertionTimeLine() }
}

/// Whether `synchronous_standby_names` names standbys: then commits wait for them.
pub fn synchronous_standbys_configured() -> bool {
    let names = unsafe { pg_sys::GetConfigOption(c"synchronous_standby_names".as_ptr(), false, false) };
    !names.is_null() && !unsafe { std::ffi::CStr::from_ptr(names) }.to_bytes().iter().all(u8::is_ascii_whitespace)
}

/// How far the synchronous standbys (as `synchronous_standby_names` counts them: priority or
/// quorum) have flushed WAL: the position up to which PostgreSQL releases commits waiting for
/// them (`WalSndCtl->lsn[SYNC_REP_WAIT_FLUSH]`, updated by the WAL senders).
pub fn synchronous_standbys_flushed() -> WalPosition {
    // PostgreSQL reads it under SyncRepLock; an aligned 64-bit load cannot tear on the platforms
    // PostgreSQL 15 supports with 64-bit atomics, and a stale value only means one more look.
    unsafe {
        let control = pg_sys::WalSndCtl;
        if control.is_null() {
            return 0;
        }
        (&raw const (*control).lsn[pg_sys::SYNC_REP_WAIT_FLUSH as usize]).read_volatile()
    }
}

/// How far the standbys named by application_name have flushed WAL, read from
/// `pg_stat_replication` (in the caller's transaction): the least of them all, or with `*` the
/// furthest of any. None while one of them (or, for `*`, every standby) is not connected.
pub fn named_standbys_flushed(names: &[String]) -> Result<Option<WalPosition>, pgrx::spi::Error> {
    let any = names.iter().any(|name| name == "*");
    let position = Spi::get_one_with_args::<String>(
        "SELECT (CASE WHEN $2 THEN max(flush_lsn - '0/0')
                      WHEN count(DISTINCT application_name) = cardinality($1) THEN min(flush_lsn - '0/0')
                 END)::text
           FROM pg_catalog.pg_stat_replication
          WHERE flush_lsn IS NOT NULL AND ($2 OR application_name = ANY ($1))",
        &[names.to_vec().into(), any.into()],
    )?;
    Ok(position.and_then(|text| text.parse().ok()))
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub fn format_position(position: WalPosition) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF)
}
