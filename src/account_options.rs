//! `onboarding._account_options`: checks an `accounts_v2` table's options (set_account_options,
//! sql/attach.sql) with core's own parser, the one the worker reads them with, and returns them
//! in their stored form (every key, defaults filled in).

use onboarding_core::stripe::v2::AccountOptions;
use pgrx::JsonB;
use pgrx::prelude::*;

#[pg_extern(name = "_account_options", immutable, parallel_safe)]
fn account_options(options: JsonB) -> JsonB {
    match AccountOptions::from_json(&options.0) {
        Ok(checked) => JsonB(checked.to_json()),
        Err(bad) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("onboarding: {}", bad.message),
                "onboarding::account_options",
            )
            .set_hint(bad.hint)
            .report(PgLogLevel::ERROR);
            unreachable!("an ERROR report returned")
        }
    }
}
