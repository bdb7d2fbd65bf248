//! The insert trigger: the outbox write on a profile's hot path, kept as cheap as an index-free
//! heap insert.
//!
//! For every inserted profile without a customer, `onboarding._intake_profile(id column, customer
//! column, attached table)` (a row-level AFTER INSERT trigger) appends one tuple `(table, user id,
//! time)` to `onboarding.intake` in the inserting transaction and asks for the workers to be woken
//! when it commits. The table has no indexes, triggers or constraints, so the tuple goes straight to the
//! heap, without the executor or a plpgsql frame; a rolled-back insert takes its tuple with it.
//! The worker promotes committed intake tuples to jobs (`onboarding._promote_intake`), where the
//! indexes, the dedup and the event log live, in batches and off the application's path.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pgrx::prelude::*;

use crate::pg::compat;
use crate::wake;

/// Columns of `onboarding.intake`, in order (sql/schema.sql).
const INTAKE_COLUMNS: usize = 3;

#[pg_trigger]
fn _intake_profile<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let data = trigger.trigger_data();
    // SAFETY: PostgreSQL hands a row-level INSERT trigger a valid relation, trigger and new tuple
    // (checked below); everything allocated here lives in the trigger's short-lived context.
    unsafe {
        let for_row = data.tg_event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let by_insert = data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_INSERT;
        if !for_row || !by_insert {
            error!("onboarding._intake_profile must be a row-level INSERT trigger (created by onboarding.attach)");
        }
        let (profiles, trigger, row) = (data.tg_relation, data.tg_trigger, data.tg_trigtuple);
        if (*trigger).tgnargs < 2 {
            error!("onboarding: the insert trigger is missing its column arguments; run onboarding.attach() again");
        }
        // Checked here rather than in a WHEN clause, which PostgreSQL parses anew for every statement.
        let (id_column, customer_column) = (*(*trigger).tgargs, *(*trigger).tgargs.add(1));
        if column(profiles, row, customer_column).is_some() {
            return Ok(None); // inserted with a customer already: nothing to provision
        }
        let Some((id, id_type)) = column(profiles, row, id_column) else {
            return Ok(None); // no id: nothing to provision
        };
        append_to_intake(attached_table(profiles, trigger), as_text(id, id_type));
    }
    wake::wake_workers_after_commit();
    Ok(None)
}

/// The attached table the jobs are for: the trigger's third argument, which names it even where
/// PostgreSQL fires the trigger on a partition (its clone on a partitioned table's partitions).
/// Triggers made before 0.3.0 have two arguments and sit on the attached table itself.
unsafe fn attached_table(profiles: pg_sys::Relation, trigger: *const pg_sys::Trigger) -> pg_sys::Oid {
    unsafe {
        if (*trigger).tgnargs < 3 {
            return (*profiles).rd_id;
        }
        let text = CStr::from_ptr(*(*trigger).tgargs.add(2));
        match text.to_str().ok().and_then(|oid| oid.parse::<u32>().ok()) {
            Some(oid) => pg_sys::Oid::from(oid),
            None => raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "onboarding: the insert trigger's table argument is not an oid",
                "Run onboarding.attach() again for this table.",
            ),
        }
    }
}

/// The value and type of the row's column `name`, or None when it is NULL.
unsafe fn column(
    profiles: pg_sys::Relation,
    row: pg_sys::HeapTuple,
    name: *const std::ffi::c_char,
) -> Option<(pg_sys::Datum, pg_sys::Oid)> {
    unsafe {
        let attnum = pg_sys::get_attnum((*profiles).rd_id, name);
        if attnum <= 0 {
            let column = CStr::from_ptr(name).to_string_lossy();
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("onboarding: the attached column \"{column}\" no longer exists"),
                "Run onboarding.attach() again with the table's current columns.",
            );
        }
        let descriptor = (*profiles).rd_att;
        let mut is_null = false;
        let value = pg_sys::heap_getattr(row, attnum as i32, descriptor, &mut is_null);
        let value_type = compat::attribute_type(descriptor, attnum);
        (!is_null).then_some((value, value_type))
    }
}

/// A value as text, through its type's output function (ids may be uuid, text or integers).
unsafe fn as_text(value: pg_sys::Datum, value_type: pg_sys::Oid) -> *mut pg_sys::text {
    unsafe {
        let mut output_function = pg_sys::InvalidOid;
        let mut is_varlena = false;
        pg_sys::getTypeOutputInfo(value_type, &mut output_function, &mut is_varlena);
        pg_sys::cstring_to_text(pg_sys::OidOutputFunctionCall(output_function, value))
    }
}

/// Appends `(profile_table, user_id, transaction start)` to `onboarding.intake` with a plain heap
/// insert. Refuses a table someone gave an index, trigger or other shape: those would be bypassed.
unsafe fn append_to_intake(profile_table: pg_sys::Oid, user_id: *mut pg_sys::text) {
    unsafe {
        let intake = open_intake();
        let form = &*(*intake).rd_rel;
        let plain_heap = form.relam == pg_sys::HEAP_TABLE_AM_OID
            && !form.relhasindex
            && (*intake).trigdesc.is_null()
            && !form.relrowsecurity
            && (*(*intake).rd_att).natts as usize == INTAKE_COLUMNS;
        if !plain_heap {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "onboarding: onboarding.intake must stay a plain heap table with no indexes, triggers or policies",
                "The insert trigger writes to it directly; drop what was added to it.",
            );
        }
        let mut values = [
            pg_sys::Datum::from(profile_table),
            pg_sys::Datum::from(user_id),
            pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()),
        ];
        let mut nulls = [false; INTAKE_COLUMNS];
        let tuple = pg_sys::heap_form_tuple((*intake).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(intake, tuple);
        // The lock stays until the transaction ends, like any insert's.
        pg_sys::table_close(intake, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// `onboarding.intake`'s oid, looked up once per backend (two catalog lookups off the hot path)
/// and forgotten on any relcache invalidation of it, such as DROP EXTENSION. Backend-local.
static INTAKE_OID: AtomicU32 = AtomicU32::new(0);
static INVALIDATION_CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Opens `onboarding.intake` with RowExclusiveLock.
unsafe fn open_intake() -> pg_sys::Relation {
    unsafe {
        let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
        let cached = INTAKE_OID.load(Ordering::Relaxed);
        if cached != 0 {
            // Taking the lock processes pending invalidations: if the cached oid was dropped
            // meanwhile, the callback forgot it (and the oid may now be another relation's).
            let intake = pg_sys::try_table_open(pg_sys::Oid::from(cached), lock);
            if !intake.is_null() {
                if INTAKE_OID.load(Ordering::Relaxed) == cached {
                    return intake;
                }
                pg_sys::table_close(intake, lock);
            }
        }
        if !INVALIDATION_CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
            pg_sys::CacheRegisterRelcacheCallback(Some(forget_intake_oid), pg_sys::Datum::from(0));
        }
        let schema = pg_sys::get_namespace_oid(c"onboarding".as_ptr(), false);
        let oid = pg_sys::get_relname_relid(c"intake".as_ptr(), schema);
        if oid == pg_sys::InvalidOid {
            error!("onboarding: table onboarding.intake is missing; reinstall the extension");
        }
        let intake = pg_sys::table_open(oid, lock);
        INTAKE_OID.store(oid.to_u32(), Ordering::Relaxed);
        intake
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_intake_oid(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid.to_u32() == INTAKE_OID.load(Ordering::Relaxed) {
        INTAKE_OID.store(0, Ordering::Relaxed);
    }
}

/// Raises an ERROR with a hint.
fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message.into(), "onboarding::intake")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}
