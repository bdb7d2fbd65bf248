//! The emulated `/v2` endpoints: parameter checks, then the handler. Runs under the state lock,
//! like `/v1`'s ([`crate::api`]).

use serde_json::{Map, Value};

use crate::api::Ctx;
use crate::error::ApiError;
use crate::route::Route;
use crate::v2::params::{self, Source};
use crate::v2::store::V2Store;
use crate::v2::{account_links, accounts};

/// Executes a `/v2` request. `progress` is what an earlier attempt with the same idempotency
/// key got done before it failed (its answer), for this retry to complete
/// ([`crate::idempotency`]): a create answers the Account it made, as it is now; a close, the
/// Account it closed; an Account Link, the link it made. An update simply runs again, which
/// changes nothing it already changed.
pub fn execute(
    route: &Route,
    params: &Value,
    store: &mut V2Store,
    ctx: &Ctx,
    progress: Option<&Value>,
) -> Result<Value, ApiError> {
    let mut p = params.as_object().cloned().unwrap_or_else(Map::new);
    let source = if route.endpoint().starts_with("GET ") { Source::Query } else { Source::Json };
    params::check(route.endpoint(), &mut p, source)?;
    match route {
        Route::CreateV2Account => match progress {
            Some(done) => accounts::completed_create(done, &p, store),
            None => accounts::create(&p, store, ctx),
        },
        Route::ListV2Accounts => accounts::list(&p, store),
        Route::GetV2Account(id) => accounts::retrieve(id, &p, store),
        Route::UpdateV2Account(id) => accounts::update(id, &p, store, ctx),
        Route::CloseV2Account(id) => accounts::close(id, &p, store, ctx, progress.is_some()),
        Route::CreateV2AccountLink => match progress {
            Some(done) => Ok(done.clone()),
            None => account_links::create(&p, store, ctx),
        },
        Route::ListV2Events => store.events.list(&p, ctx.now_ms),
        Route::GetV2Event(id) => store.events.retrieve(id, ctx.now_ms),
        // The server hands these to `crate::api`; never reached.
        _ => Err(ApiError::new(500, "api_error", "a /v1 endpoint reached the /v2 handlers")),
    }
}
