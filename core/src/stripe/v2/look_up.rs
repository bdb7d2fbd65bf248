//! Finding a user's v2 Account (`metadata.user_id`) before making one.
//!
//! The v2 list takes no metadata or email filter (`AccountListParams` has only `limit`,
//! `applied_configurations` and `closed`), and there is no v2 Account search: the only way is to
//! walk every Account of the platform, as v1's account look-up does. Unlike v1's, the walk can
//! prove nothing absent: the v2 list is eventually consistent, so an Account made a moment ago may
//! not be listed yet. So the answer says what was seen ([`AccountLookUp::NotFound`] counts the
//! Accounts read) and the caller decides what that is worth — a job whose create is recent parks
//! rather than make a second Account.

use std::collections::HashSet;
use std::fmt;

use super::accounts::{Account, AccountsFilter, ListedAccount};
use super::wire::V2Client;
use crate::stripe::error::StripeError;

/// What a look-up of a user's v2 Account found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountLookUp {
    /// The user's Account: the oldest if several (by `created`, then id), with the ids of the
    /// others (duplicates to look at).
    Found { account: Account, others: Vec<String> },
    /// Not among the `scanned` Accounts listed, read to the end of the list. Not proof of
    /// absence: the list lags behind writes.
    NotFound { scanned: u64 },
    /// It may exist and could not be found: the list is longer than the bound, or changed under
    /// the walk (an Account listed twice, a page given twice, an entry without an id). Never
    /// create on this; the reason (no secrets, no personal data) is for the job's `last_error`.
    Undecided(String),
}

impl fmt::Display for AccountLookUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountLookUp::Found { account, others } if others.is_empty() => write!(f, "found {}", account.id),
            AccountLookUp::Found { account, others } => {
                write!(f, "found {} (and {} more made for the same user)", account.id, others.len())
            }
            AccountLookUp::NotFound { scanned } => write!(
                f,
                "not found in the {scanned} Accounts listed; the v2 list is eventually consistent, \
                 so an Account made in the last minutes may not be listed yet"
            ),
            AccountLookUp::Undecided(reason) => write!(f, "cannot decide: {reason}"),
        }
    }
}

impl V2Client {
    /// Looks for the live (not closed) Account Stripe holds for `user_id` (its
    /// `metadata.user_id`, compared exactly), never one of `not_these` (Accounts made for other
    /// profiles with the same user id, which a look-up must neither adopt nor close). Reads at
    /// most the look-up bound's pages of 100 (`StripeClient::with_look_up_max_pages`, the v1
    /// account look-up's bound). `Err` when a page fails: the caller's retry policy applies.
    pub async fn find_account(&self, user_id: &str, not_these: &[String]) -> Result<AccountLookUp, StripeError> {
        let max_pages = self.look_up_max_pages();
        let mut seen: HashSet<String> = HashSet::new();
        let mut pages_read: HashSet<String> = HashSet::new();
        let mut found: Vec<Account> = Vec::new();
        let mut page = self.list_accounts(&AccountsFilter::default()).await?;
        let mut pages = 1;
        loop {
            for entry in page.data {
                let ListedAccount::Account(account) = entry else {
                    return Ok(AccountLookUp::Undecided(
                        "the list of Accounts has an entry without a usable id: it cannot be ruled out".into(),
                    ));
                };
                if !seen.insert(account.id.clone()) {
                    return Ok(AccountLookUp::Undecided(
                        "an Account was listed twice, so the list changed while it was read: look again later".into(),
                    ));
                }
                if !account.closed
                    && account.metadata_user_id.as_deref() == Some(user_id)
                    && !not_these.contains(&account.id)
                {
                    found.push(account);
                }
            }
            let Some(next) = page.next else { break };
            if !pages_read.insert(next.url().to_string()) {
                return Ok(AccountLookUp::Undecided("the list gave the same page twice: look again later".into()));
            }
            if pages >= max_pages {
                return Ok(AccountLookUp::Undecided(format!(
                    "the platform's Accounts fill more than {max_pages} pages: gave up looking for the user's"
                )));
            }
            page = self.next_accounts_page(&next).await?;
            pages += 1;
        }
        Ok(decide(found, seen.len() as u64))
    }
}

/// The answer once the whole list was read: the oldest found, else not found among `scanned`.
fn decide(mut found: Vec<Account>, scanned: u64) -> AccountLookUp {
    // No `created` sorts last: an Account whose age is unknown is not taken as the oldest.
    found.sort_by(|a, b| (a.created_ms.unwrap_or(i64::MAX), &a.id).cmp(&(b.created_ms.unwrap_or(i64::MAX), &b.id)));
    let mut found = found.into_iter();
    match found.next() {
        Some(account) => AccountLookUp::Found { account, others: found.map(|a| a.id).collect() },
        None => AccountLookUp::NotFound { scanned },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn account(id: &str, created: Option<&str>) -> Account {
        Account::from_json(
            &json!({"id": id, "object": "v2.core.account", "created": created, "metadata": {"user_id": "u"}}),
        )
        .unwrap()
    }

    #[test]
    fn the_oldest_wins_ties_going_to_the_smaller_id_and_unknown_ages_last() {
        let found = vec![
            account("acct_new", Some("2026-01-02T00:00:00.000Z")),
            account("acct_unknown", None),
            account("acct_b", Some("2026-01-01T00:00:00.000Z")),
            account("acct_a", Some("2026-01-01T00:00:00.000Z")),
        ];
        let AccountLookUp::Found { account, others } = decide(found, 9) else { panic!("not found") };
        assert_eq!(account.id, "acct_a");
        assert_eq!(others, ["acct_b", "acct_new", "acct_unknown"]);
        assert_eq!(decide(vec![], 9), AccountLookUp::NotFound { scanned: 9 });
    }

    #[test]
    fn the_reasons_say_what_was_seen_and_nothing_else() {
        let not_found = AccountLookUp::NotFound { scanned: 250 }.to_string();
        assert!(not_found.contains("250 Accounts") && not_found.contains("eventually consistent"), "{not_found}");
        let found = AccountLookUp::Found { account: account("acct_a", None), others: vec!["acct_b".into()] };
        assert_eq!(found.to_string(), "found acct_a (and 1 more made for the same user)");
        assert!(AccountLookUp::Undecided("x".into()).to_string().starts_with("cannot decide"));
    }
}
