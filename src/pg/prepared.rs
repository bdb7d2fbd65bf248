//! Statements prepared once per process and reused (`SPI_keepplan`): the hot path's text is
//! parsed and planned at its first use only. PostgreSQL re-plans a kept plan by itself when what
//! it names changes (`ALTER EXTENSION … UPDATE` replacing a function), so a plan never goes stale.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult, SpiTupleTable};

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, OwnedPreparedStatement>> = RefCell::default();
    /// Statements made at run time (an attached table's, which name it): a few per table.
    static MADE_PLANS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::default();
}

/// At most this many statements made at run time are kept (then all are dropped and kept anew):
/// a database with many attached tables, or tables attached and detached for years, stays bounded.
const MADE_PLANS_AT_MOST: usize = 256;

/// Runs `sql` with `args` through its kept plan (prepared at its first use, for the arguments'
/// types), in the caller's transaction, and hands the rows to `read`.
pub fn run<R>(
    sql: &'static str,
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> SpiResult<R>,
) -> SpiResult<R> {
    Spi::connect_mut(|client| {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if !plans.contains_key(sql) {
                let types: Vec<PgOid> = args.iter().map(|arg| PgOid::from(arg.oid())).collect();
                let plan = client.prepare_mut(sql, &types)?.keep();
                plans.insert(sql, plan);
            }
            let rows = client.update(&plans[sql], None, args)?;
            read(rows)
        })
    })
}

/// [`run`] for a statement of one value (NULL: None).
pub fn one<T: FromDatum + IntoDatum>(sql: &'static str, args: &[DatumWithOid]) -> SpiResult<Option<T>> {
    run(sql, args, |rows| rows.first().get_one::<T>())
}

/// [`run`] for a statement made at run time (an attached table's: its text names the table and
/// columns), kept by its text.
pub fn run_made<R>(sql: &str, args: &[DatumWithOid], read: impl FnOnce(SpiTupleTable) -> SpiResult<R>) -> SpiResult<R> {
    Spi::connect_mut(|client| {
        MADE_PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if !plans.contains_key(sql) {
                if plans.len() >= MADE_PLANS_AT_MOST {
                    plans.clear();
                }
                let types: Vec<PgOid> = args.iter().map(|arg| PgOid::from(arg.oid())).collect();
                let plan = client.prepare_mut(sql, &types)?.keep();
                plans.insert(sql.to_string(), plan);
            }
            let rows = client.update(&plans[sql], None, args)?;
            read(rows)
        })
    })
}
