//! A Connect condition (`set_connect_policy(…, 'when', condition)`): exactly one SQL expression,
//! checked with PostgreSQL's own raw parser before it is ever evaluated. Wrapped as
//! `SELECT (condition)`, it must parse to one plain SELECT of one value — no second statement
//! (`true; SELECT set_config(…)`), no FROM/WHERE/… smuggled in through a closing parenthesis.
//! It is evaluated only as the table's owner (src/tables.rs).

use pgrx::prelude::*;
use pgrx::{PgList, is_a};

/// Longest condition accepted; conditions are short predicates over a row.
const MAX_LENGTH: usize = 2000;
/// How much of a refused condition (or any argument) an error message quotes.
const QUOTED: usize = 60;

/// The start of `condition` (or any argument) for an error message: at most [`QUOTED`] characters.
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

/// [`quoted`] for SQL: what error messages show of a condition, or of any other argument (a 1 MB
/// argument is not echoed whole into the logs).
#[pg_extern(name = "_quoted_prefix", immutable, parallel_safe)]
fn quoted_prefix(value: &str) -> String {
    quoted(value)
}

/// The columns a condition reads, as far as a walk of its raw parse tree can tell: the names of
/// its column references (`role`, `p.role`), or None when it cannot tell (a whole-row reference,
/// a subquery, a node this walk does not know). The Connect trigger fires on updates of these
/// columns only (and of the customer column); None makes it fire on every update.
#[pg_extern(name = "_condition_columns", immutable, parallel_safe)]
fn condition_columns(condition: &str) -> Option<Vec<String>> {
    check_connect_condition(condition);
    let wrapped = std::ffi::CString::new(format!("SELECT ({condition}\n)")).unwrap();
    unsafe {
        let statements = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            wrapped.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        let select = &*((*statements.get_ptr(0)?).stmt as *const pg_sys::SelectStmt);
        let target = PgList::<pg_sys::ResTarget>::from_pg(select.targetList).get_ptr(0)?;
        let mut columns = Vec::new();
        collect_columns((*target).val, &mut columns)?;
        columns.sort();
        columns.dedup();
        Some(columns)
    }
}

/// Adds the columns `node` reads to `columns`; None for what it cannot follow.
unsafe fn collect_columns(node: *mut pg_sys::Node, columns: &mut Vec<String>) -> Option<()> {
    use pg_sys::NodeTag::*;
    if node.is_null() {
        return Some(());
    }
    unsafe {
        let each = |list: *mut pg_sys::List, columns: &mut Vec<String>| -> Option<()> {
            for item in PgList::<pg_sys::Node>::from_pg(list).iter_ptr() {
                collect_columns(item, columns)?;
            }
            Some(())
        };
        match (*node).type_ {
            T_ColumnRef => {
                let fields = PgList::<pg_sys::Node>::from_pg((*(node as *mut pg_sys::ColumnRef)).fields);
                // `column` or `p.column` (the condition's row is `p`); anything else: can't tell.
                let last = fields.get_ptr(fields.len().checked_sub(1)?)?;
                let qualified_by_p = fields.len() == 2
                    && is_a(fields.get_ptr(0)?, T_String)
                    && std::ffi::CStr::from_ptr((*(fields.get_ptr(0)? as *mut pg_sys::String)).sval).to_bytes() == b"p";
                if !is_a(last, T_String) || !(fields.len() == 1 || qualified_by_p) {
                    return None;
                }
                let name = std::ffi::CStr::from_ptr((*(last as *mut pg_sys::String)).sval);
                columns.push(name.to_string_lossy().into_owned());
                Some(())
            }
            T_A_Const | T_ParamRef => Some(()),
            T_A_Expr => {
                let expr = node as *mut pg_sys::A_Expr;
                collect_columns((*expr).lexpr, columns)?;
                collect_columns((*expr).rexpr, columns)
            }
            T_BoolExpr => each((*(node as *mut pg_sys::BoolExpr)).args, columns),
            T_FuncCall => {
                let call = node as *mut pg_sys::FuncCall;
                if !(*call).agg_filter.is_null() || !(*call).over.is_null() || (*call).agg_star {
                    return None;
                }
                each((*call).args, columns)
            }
            T_TypeCast => collect_columns((*(node as *mut pg_sys::TypeCast)).arg, columns),
            T_NullTest => collect_columns((*(node as *mut pg_sys::NullTest)).arg as *mut pg_sys::Node, columns),
            T_BooleanTest => collect_columns((*(node as *mut pg_sys::BooleanTest)).arg as *mut pg_sys::Node, columns),
            T_CoalesceExpr => each((*(node as *mut pg_sys::CoalesceExpr)).args, columns),
            T_MinMaxExpr => each((*(node as *mut pg_sys::MinMaxExpr)).args, columns),
            T_A_ArrayExpr => each((*(node as *mut pg_sys::A_ArrayExpr)).elements, columns),
            T_List => each(node as *mut pg_sys::List, columns),
            T_CaseExpr => {
                let case = node as *mut pg_sys::CaseExpr;
                collect_columns((*case).arg as *mut pg_sys::Node, columns)?;
                each((*case).args, columns)?;
                collect_columns((*case).defresult as *mut pg_sys::Node, columns)
            }
            T_CaseWhen => {
                let when = node as *mut pg_sys::CaseWhen;
                collect_columns((*when).expr as *mut pg_sys::Node, columns)?;
                collect_columns((*when).result as *mut pg_sys::Node, columns)
            }
            _ => None, // a subquery, a whole-row reference, …: every update may matter
        }
    }
}
