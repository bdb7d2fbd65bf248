//! A Connect condition (`set_connect_policy(…, 'when', condition)`): exactly one SQL expression,
//! checked with PostgreSQL's own raw parser before it is ever evaluated. Wrapped as
//! `SELECT (condition)`, it must parse to one plain SELECT of one value — no second statement
//! (`true; SELECT set_config(…)`), no FROM/WHERE/… smuggled in through a closing parenthesis.
//! It is evaluated only as the table's owner (src/tables.rs).

use pgrx::prelude::*;
use pgrx::{PgList, is_a};

/// Longest condition accepted; conditions are short predicates over a row.
const MAX_LENGTH: usize = 2000;
/// How much of a refused condition an error message quotes.
const QUOTED: usize = 60;

/// The start of `condition` for an error message: at most [`QUOTED`] characters.
fn quoted(condition: &str) -> String {
    let mut shown: String = condition.chars().take(QUOTED).collect();
    if shown.len() < condition.len() {
        shown.push('…');
    }
    format!("'{}'", shown.replace('\'', "''"))
}

fn refuse(condition: &str, why: &str) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("onboarding: the connect condition {} is not one SQL expression: {why}", quoted(condition)),
        "Write one boolean expression over the profile's columns, e.g. role = 'provider'."
    );
    unreachable!("ereport(ERROR) returned")
}

/// Refuses (22023, with a hint) anything but one SQL expression of at most [`MAX_LENGTH`]
/// characters. Syntax errors are PostgreSQL's own (42601).
#[pg_extern(name = "_check_connect_condition", immutable, parallel_safe)]
fn check_connect_condition(condition: &str) {
    if condition.len() > MAX_LENGTH {
        refuse(condition, &format!("it is {} characters long, more than {MAX_LENGTH}", condition.len()));
    }
    if condition.contains('\0') {
        refuse(condition, "it contains a NUL character");
    }
    let wrapped = std::ffi::CString::new(format!("SELECT ({condition}\n)")).unwrap();
    let statements = unsafe {
        PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            wrapped.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ))
    };
    if statements.len() != 1 {
        refuse(condition, "it holds more than one statement");
    }
    let statement = unsafe { (*statements.get_ptr(0).unwrap()).stmt };
    if !unsafe { is_a(statement, pg_sys::NodeTag::T_SelectStmt) } {
        refuse(condition, "it is not an expression");
    }
    let select = unsafe { &*(statement as *const pg_sys::SelectStmt) };
    let targets = unsafe { PgList::<pg_sys::Node>::from_pg(select.targetList) };
    let plain = targets.len() == 1
        && select.op == pg_sys::SetOperation::SETOP_NONE
        && select.distinctClause.is_null()
        && select.intoClause.is_null()
        && select.fromClause.is_null()
        && select.whereClause.is_null()
        && select.groupClause.is_null()
        && select.havingClause.is_null()
        && select.windowClause.is_null()
        && select.valuesLists.is_null()
        && select.sortClause.is_null()
        && select.limitOffset.is_null()
        && select.limitCount.is_null()
        && select.lockingClause.is_null()
        && select.withClause.is_null();
    if !plain {
        refuse(condition, "it closes its parenthesis and goes on as a query");
    }
}

/// [`quoted`] for SQL: what error messages about a condition show of it.
#[pg_extern(name = "_quoted_condition", immutable, parallel_safe)]
fn quoted_condition(condition: &str) -> String {
    quoted(condition)
}
