//! What differs between the PostgreSQL majors the extension is built for (15, 16 and 18: the
//! `pg15`, `pg16`, `pg18` features), in one place: every `cfg` on a major is here.

use std::ffi::c_int;

use pgrx::pg_sys;

/// Installs `handler` for `signal` in this backend. PostgreSQL 18 renamed the backend's
/// `pqsignal` to `pqsignal_be` (a macro in C).
pub unsafe fn set_signal_handler(signal: u32, handler: pg_sys::pqsigfunc) {
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::pqsignal_be(signal as c_int, handler)
    };
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::pqsignal(signal as c_int, handler)
    };
}

/// The PGPROC number of `proc` (its place in `ProcGlobal->allProcs`): a field until PostgreSQL 16,
/// computed from the array since 17 (`GetNumberFromPGProc`).
pub unsafe fn procno(proc: *mut pg_sys::PGPROC) -> i32 {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    unsafe {
        proc.offset_from((*pg_sys::ProcGlobal).allProcs) as i32
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    unsafe {
        (*proc).pgprocno
    }
}

/// The type of attribute `attnum` (counted from 1) of `descriptor`. PostgreSQL 18 keeps the
/// attributes behind `TupleDescAttr` (the array became `compact_attrs` plus a tail).
pub unsafe fn attribute_type(descriptor: pg_sys::TupleDesc, attnum: i16) -> pg_sys::Oid {
    #[cfg(feature = "pg18")]
    unsafe {
        (*pg_sys::TupleDescAttr(descriptor, c_int::from(attnum) - 1)).atttypid
    }
    #[cfg(not(feature = "pg18"))]
    unsafe {
        (*(*descriptor).attrs.as_ptr().add(attnum as usize - 1)).atttypid
    }
}
