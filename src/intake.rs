//! The insert trigger: the outbox write on a profile's hot path, kept as cheap as an index-free
//! heap insert.
//!
//! For every inserted profile without a customer, `onboarding._intake_profile()` (a row-level
//! AFTER INSERT trigger, filtered by its WHEN clause) appends one tuple `(table, user id, time)` to
//! `onboarding.intake` in the inserting transaction and asks for the workers to be woken when it
//! commits. The table has no indexes, triggers or constraints, so the tuple goes straight to the
//! heap, without the executor or a plpgsql frame; a rolled-back insert takes its tuple with it.
//! The worker promotes committed intake tuples to jobs (`onboarding._promote_intake`), where the
//! indexes, the dedup and the event log live, in batches and off the application's path.

use std::ffi::CStr;

use pgrx::prelude::*;

use crate::wake;

/// Columns of `onboarding.intake`, in order (sql/onboarding.sql).
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
        let profiles = data.tg_relation;
        let profile_table = (*profiles).rd_id;
        let user_id = id_as_text(profiles, data.tg_trigger, data.tg_trigtuple);
        if user_id.is_null() {
            return Ok(None); // no id: nothing to provision (the WHEN clause normally filters these)
        }
        append_to_intake(profile_table, user_id);
    }
    wake::wake_workers_after_commit();
    Ok(None)
}

/// The new row's id column (the trigger's argument) as text, or null when the id is NULL.
unsafe fn id_as_text(
    profiles: pg_sys::Relation,
    trigger: *const pg_sys::Trigger,
    row: pg_sys::HeapTuple,
) -> *mut pg_sys::text {
    unsafe {
        if (*trigger).tgnargs < 1 {
            error!("onboarding: the insert trigger is missing its id column argument; run onboarding.attach() again");
        }
        let id_column = *(*trigger).tgargs;
        let attnum = pg_sys::get_attnum((*profiles).rd_id, id_column);
        if attnum <= 0 {
            let column = CStr::from_ptr(id_column).to_string_lossy();
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("onboarding: the attached id column \"{column}\" no longer exists"),
                "Run onboarding.attach() again with the table's current id column."
            );
        }
        let descriptor = (*profiles).rd_att;
        let mut is_null = false;
        let id = pg_sys::heap_getattr(row, attnum as i32, descriptor, &mut is_null);
        if is_null {
            return std::ptr::null_mut();
        }
        let id_type = (*(*descriptor).attrs.as_ptr().add(attnum as usize - 1)).atttypid;
        let mut output_function = pg_sys::InvalidOid;
        let mut is_varlena = false;
        pg_sys::getTypeOutputInfo(id_type, &mut output_function, &mut is_varlena);
        pg_sys::cstring_to_text(pg_sys::OidOutputFunctionCall(output_function, id))
    }
}

/// Appends `(profile_table, user_id, transaction start)` to `onboarding.intake` with a plain heap
/// insert. Refuses a table someone gave an index, trigger or other shape: those would be bypassed.
unsafe fn append_to_intake(profile_table: pg_sys::Oid, user_id: *mut pg_sys::text) {
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"onboarding".as_ptr(), false);
        let intake_oid = pg_sys::get_relname_relid(c"intake".as_ptr(), schema);
        if intake_oid == pg_sys::InvalidOid {
            error!("onboarding: table onboarding.intake is missing; reinstall the extension");
        }
        let intake = pg_sys::table_open(intake_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let form = &*(*intake).rd_rel;
        let plain_heap = form.relam == pg_sys::HEAP_TABLE_AM_OID
            && !form.relhasindex
            && (*intake).trigdesc.is_null()
            && !form.relrowsecurity
            && (*(*intake).rd_att).natts as usize == INTAKE_COLUMNS;
        if !plain_heap {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "onboarding: onboarding.intake must stay a plain heap table with no indexes, triggers or policies",
                "The insert trigger writes to it directly; drop what was added to it."
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
