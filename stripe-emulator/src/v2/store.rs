//! What the emulator holds for `/v2`: Accounts v2 (closed ones stay, as Stripe keeps them
//! retrievable) and thin events. Kept apart from the `/v1` objects: a v2 Account is not served
//! by `/v1/accounts` (Stripe serves v2 Accounts with the merchant or recipient configuration
//! through v1 too; not modelled).

use std::collections::HashMap;

use crate::onboarding::Onboarding;
use crate::store::Collection;
use crate::v2::events::ThinEventLog;

#[derive(Default)]
pub struct V2Store {
    /// Each Account whole, every include-dependent field filled in; answers show what the
    /// request included (`crate::v2::accounts::render`).
    pub accounts: Collection,
    pub events: ThinEventLog,
    /// The onboarding step a test last moved each Account to: API updates then leave its
    /// `requirements` as the step set them, and capabilities requested later start in the
    /// step's status.
    pub onboarding: HashMap<String, Onboarding>,
    next_seq: u64,
}

impl V2Store {
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}
