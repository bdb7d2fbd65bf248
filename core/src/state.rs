//! The job state machine: what a job is (`JobKind`), where it is in its life (`JobState`), and
//! the named moves between states (`Transition`), each carrying its reason. Every state change
//! the worker makes is a `Transition`; in SQL the same moves are enforced by the jobs table's
//! state-machine triggers (`onboarding._job_state_machine`, sql/job_states.sql), whose table of
//! allowed moves [`JobState::may_become`] mirrors (a test compares the two).
//!
//! ```text
//!   pending ──claim──▶ running ──written back / already there / compensated──▶ succeeded
//!      ▲  │               │  ├──profile gone, nothing to undo────────────────▶ skipped
//!      │  │               │  ├──created, but no profile can use it───────────▶ orphaned
//!      │  │               │  └──permanent error, attempts exhausted──────────▶ dead
//!      │  │               └──failed (retry in d) / postponed / lease lost──▶ pending
//!      │  └──cancel──▶ cancelled
//!      └──────retry (DBA)── dead, cancelled
//! ```

use std::fmt;
use std::time::Duration;

/// What a job does; `onboarding.jobs.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Create the profile's Stripe customer and write its id back (the trigger's job).
    CreateCustomer,
    /// Compensation: delete a customer no profile can use (`stripe_id` names it).
    DeleteCustomer,
    /// Copy the profile's changed email to its customer (`stripe_id`).
    UpdateCustomerEmail,
    /// Create the profile's Express Connect account (after its customer) and write it back.
    CreateConnectAccount,
    /// Compensation: delete a Connect account no profile can use (`stripe_id`).
    DeleteConnectAccount,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::CreateCustomer,
        JobKind::DeleteCustomer,
        JobKind::UpdateCustomerEmail,
        JobKind::CreateConnectAccount,
        JobKind::DeleteConnectAccount,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateCustomer => "create_customer",
            JobKind::DeleteCustomer => "delete_customer",
            JobKind::UpdateCustomerEmail => "update_customer_email",
            JobKind::CreateConnectAccount => "create_connect_account",
            JobKind::DeleteConnectAccount => "delete_connect_account",
        }
    }

    pub fn parse(name: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Connect's jobs (accounts): they need Connect's permissions, and nothing else does.
    pub const fn is_connect(self) -> bool {
        matches!(self, JobKind::CreateConnectAccount | JobKind::DeleteConnectAccount)
    }

    /// Jobs that work on an existing Stripe object, named by `stripe_id` from the start.
    pub const fn targets_an_object(self) -> bool {
        matches!(self, JobKind::DeleteCustomer | JobKind::UpdateCustomerEmail | JobKind::DeleteConnectAccount)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is; `onboarding.jobs.state`. Each state says what moves a job in and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for `run_at`.
    /// In: enqueued (insert trigger via the intake, `enqueue_*`, compensation, email sync);
    /// [`Transition::RetryIn`], [`Transition::Postpone`], [`Transition::Requeue`] from running;
    /// [`Transition::Retry`] of a dead or cancelled job by a DBA.
    /// Out: [`Transition::Claim`] to running; [`Transition::Cancel`].
    Pending,
    /// Claimed by a worker (`claimed_by`), its Stripe call about to go out or in flight.
    /// In: [`Transition::Claim`]. Out: every other transition but cancel and retry.
    Running,
    /// Done: the object was created and written back, found already there, deleted (compensation)
    /// or updated. In: [`Transition::Succeed`]. Final.
    Succeeded,
    /// Nothing to do (profile gone, table detached, customer in use again), after undoing a lost
    /// attempt if there was one. In: [`Transition::Skip`]. Final.
    Skipped,
    /// An object was created that no profile can use (`stripe_id`); a compensation job deletes
    /// it. In: [`Transition::Orphan`]. Final.
    Orphaned,
    /// Parked with its reason (`last_error`): a permanent error, attempts exhausted, an unusable
    /// profile. In: [`Transition::Die`], or a requeue with no attempt left. Out: [`Transition::Retry`].
    Dead,
    /// Stopped by a DBA before it ran. In: [`Transition::Cancel`]. Out: [`Transition::Retry`].
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Running,
        JobState::Succeeded,
        JobState::Skipped,
        JobState::Orphaned,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Skipped => "skipped",
            JobState::Orphaned => "orphaned",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Still to be worked on: at most one such job per profile, kind and target.
    pub const fn is_open(self) -> bool {
        matches!(self, JobState::Pending | JobState::Running)
    }

    /// Finished (`finished_at` is set exactly then); dead and cancelled can still be retried.
    pub const fn is_final(self) -> bool {
        !self.is_open()
    }

    /// Finished with nothing left for anyone to do: retention may prune it (dead and orphaned jobs
    /// wait for a human).
    pub const fn is_done(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Skipped | JobState::Cancelled)
    }

    /// The states a job in `self` may move to: the state machine as a table.
    pub const fn may_become(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            Pending => &[Running, Cancelled],
            Running => &[Pending, Succeeded, Skipped, Orphaned, Dead],
            Dead | Cancelled => &[Pending],
            Succeeded | Skipped | Orphaned => &[],
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job succeeded: the step its event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Success {
    /// The object it created (or adopted) is on the profile now.
    WrittenBack,
    /// The profile already had the object: nothing was sent (event step `skipped`).
    AlreadyThere,
    /// The object a compensation job was for is deleted (or was already gone).
    Compensated,
    /// The customer has the profile's new email.
    EmailUpdated,
}

/// A named move of one job, with what it carries. [`Transition::to`] is where it goes,
/// [`Transition::from`] where it may come from, [`Transition::step`] the event it records.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A worker takes a due job.
    Claim,
    /// Done; `stripe_id` is the object the job created or acted on, when it is its own.
    Succeed { how: Success, stripe_id: Option<String> },
    /// Nothing to do, `because`; `undone` names an object a lost attempt created and that was
    /// deleted first (event step `compensated`).
    Skip { because: String, undone: Option<String> },
    /// `object` was created but no profile can use it, `because`.
    Orphan { object: String, because: String },
    /// A failed attempt, tried again in `delay`.
    RetryIn { delay: Duration, error: String },
    /// Not now, and not an attempt: a Connect account waiting for its customer.
    Postpone { delay: Duration, because: String },
    /// The worker holding it exited or overran its lease; attempts left.
    Requeue,
    /// Parked with its reason; `object` names what it created, if its result could not be recorded.
    Die { error: String, object: Option<String> },
    /// A DBA stops a pending job.
    Cancel,
    /// A DBA puts a dead or cancelled job back, with a fresh attempt budget and the same key.
    Retry,
}

impl Transition {
    /// [`Transition::Skip`] with nothing undone: nothing to do, `because`.
    pub fn skip(because: &str) -> Transition {
        Transition::Skip { because: because.into(), undone: None }
    }

    /// [`Transition::Die`] naming no object: parked with `error`.
    pub fn die(error: &str) -> Transition {
        Transition::Die { error: error.into(), object: None }
    }

    pub fn to(&self) -> JobState {
        match self {
            Transition::Claim => JobState::Running,
            Transition::Succeed { .. } => JobState::Succeeded,
            Transition::Skip { .. } => JobState::Skipped,
            Transition::Orphan { .. } => JobState::Orphaned,
            Transition::RetryIn { .. } | Transition::Postpone { .. } | Transition::Requeue | Transition::Retry => {
                JobState::Pending
            }
            Transition::Die { .. } => JobState::Dead,
            Transition::Cancel => JobState::Cancelled,
        }
    }

    /// The states this move starts from.
    pub fn from(&self) -> &'static [JobState] {
        match self {
            Transition::Claim | Transition::Cancel => &[JobState::Pending],
            Transition::Retry => &[JobState::Dead, JobState::Cancelled],
            _ => &[JobState::Running],
        }
    }

    /// The step of the event that records this move in `onboarding.events`.
    pub fn step(&self) -> &'static str {
        match self {
            Transition::Claim => "claimed",
            Transition::Succeed { how: Success::WrittenBack, .. } => "written_back",
            Transition::Succeed { how: Success::AlreadyThere, .. } => "skipped",
            Transition::Succeed { how: Success::Compensated, .. } => "compensated",
            Transition::Succeed { how: Success::EmailUpdated, .. } => "email_updated",
            Transition::Skip { undone: None, .. } => "skipped",
            Transition::Skip { undone: Some(_), .. } => "compensated",
            Transition::Orphan { .. } => "orphaned",
            Transition::RetryIn { .. } => "failed",
            Transition::Postpone { .. } => "postponed",
            Transition::Requeue => "requeued",
            Transition::Die { .. } => "dead",
            Transition::Cancel => "cancelled",
            Transition::Retry => "retried",
        }
    }

    /// The Stripe object the job is left naming (`jobs.stripe_id`), if this move sets one.
    pub fn stripe_id(&self) -> Option<&str> {
        match self {
            Transition::Succeed { stripe_id, .. } => stripe_id.as_deref(),
            Transition::Skip { undone, .. } => undone.as_deref(),
            Transition::Orphan { object, .. } => Some(object),
            Transition::Die { object, .. } => object.as_deref(),
            _ => None,
        }
    }

    /// What goes to `jobs.last_error`, if this move records an error.
    pub fn error(&self) -> Option<&str> {
        match self {
            Transition::RetryIn { error, .. } | Transition::Die { error, .. } => Some(error),
            Transition::Orphan { because, .. } => Some(because),
            _ => None,
        }
    }

    /// When a pending job runs again.
    pub fn run_in(&self) -> Option<Duration> {
        match self {
            Transition::RetryIn { delay, .. } | Transition::Postpone { delay, .. } => Some(*delay),
            _ => None,
        }
    }

    /// Whether the attempt the claim counted is given back (a postponement is not an attempt).
    pub fn refunds_attempt(&self) -> bool {
        matches!(self, Transition::Postpone { .. })
    }

    /// Checks the move against the job's current state.
    pub fn apply(&self, current: JobState) -> Result<JobState, IllegalTransition> {
        if self.from().contains(&current) {
            Ok(self.to())
        } else {
            Err(IllegalTransition { from: current, step: self.step(), to: self.to() })
        }
    }
}

/// A move the state machine does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    pub from: JobState,
    pub step: &'static str,
    pub to: JobState,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} job cannot be {} (to {})", self.from, self.step, self.to)
    }
}

impl std::error::Error for IllegalTransition {}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_transition() -> Vec<Transition> {
        let d = Duration::from_secs(1);
        let mut all = vec![
            Transition::Claim,
            Transition::Skip { because: "gone".into(), undone: None },
            Transition::Skip { because: "gone".into(), undone: Some("cus_1".into()) },
            Transition::Orphan { object: "cus_1".into(), because: "deleted".into() },
            Transition::RetryIn { delay: d, error: "500".into() },
            Transition::Postpone { delay: d, because: "customer first".into() },
            Transition::Requeue,
            Transition::Die { error: "400".into(), object: None },
            Transition::Cancel,
            Transition::Retry,
        ];
        for how in [Success::WrittenBack, Success::AlreadyThere, Success::Compensated, Success::EmailUpdated] {
            all.push(Transition::Succeed { how, stripe_id: None });
        }
        all
    }

    #[test]
    fn names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobState::parse("done"), None);
        assert_eq!(JobKind::parse("create"), None);
    }

    #[test]
    fn transitions_are_exactly_the_table() {
        // Every named transition follows an edge of may_become, and every edge has a transition.
        let mut edges = Vec::new();
        for t in every_transition() {
            for from in t.from() {
                assert!(from.may_become().contains(&t.to()), "{t:?} from {from} is not in the table");
                edges.push((*from, t.to()));
            }
        }
        for from in JobState::ALL {
            for to in from.may_become() {
                assert!(edges.contains(&(from, *to)), "no transition moves {from} to {to}");
            }
        }
    }

    #[test]
    fn final_states_are_final_except_for_a_dba_retry() {
        for state in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            let onward: Vec<_> = state.may_become().to_vec();
            assert!(onward.is_empty() || onward == [JobState::Pending], "{state} -> {onward:?}");
        }
        assert_eq!(Transition::Retry.apply(JobState::Succeeded).unwrap_err().to, JobState::Pending);
        assert_eq!(Transition::Cancel.apply(JobState::Pending), Ok(JobState::Cancelled));
        assert!(Transition::Cancel.apply(JobState::Running).is_err());
        assert!(Transition::Requeue.apply(JobState::Pending).is_err());
    }

    #[test]
    fn moves_carry_their_reasons() {
        let orphan = Transition::Orphan { object: "cus_9".into(), because: "profile deleted".into() };
        assert_eq!(
            (orphan.stripe_id(), orphan.error(), orphan.step()),
            (Some("cus_9"), Some("profile deleted"), "orphaned")
        );
        let retry = Transition::RetryIn { delay: Duration::from_millis(250), error: "timeout".into() };
        assert_eq!(
            (retry.run_in(), retry.error(), retry.refunds_attempt()),
            (Some(Duration::from_millis(250)), Some("timeout"), false)
        );
        let postpone = Transition::Postpone { delay: Duration::from_secs(1), because: "waiting".into() };
        assert!(postpone.refunds_attempt() && postpone.error().is_none());
        let undone = Transition::Skip { because: "profile gone".into(), undone: Some("cus_2".into()) };
        assert_eq!((undone.step(), undone.stripe_id()), ("compensated", Some("cus_2")));
    }

    /// sql/job_states.sql, the SQL state machine's definitions.
    fn sql_job_states() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/job_states.sql");
        std::fs::read_to_string(path).unwrap()
    }

    /// The SQL names of the states (`onboarding._pending()` …) and its groups of states
    /// (`onboarding._is_open(state)` …) must be these.
    #[test]
    fn sql_state_names_and_groups_match() {
        let text = sql_job_states();
        let start = text.find("-- state machine: states begin").expect("states begin marker");
        let end = text.find("-- state machine: states end").expect("states end marker");
        let named: Vec<(String, String)> = text[start..end]
            .lines()
            .filter_map(|l| {
                let function = l.strip_prefix("CREATE FUNCTION onboarding._")?.split_once("()")?.0;
                let value = l.split("RETURN '").nth(1)?.split_once("';")?.0;
                Some((function.to_string(), value.to_string()))
            })
            .collect();
        let expected: Vec<(String, String)> =
            JobState::ALL.into_iter().map(|s| (s.as_str().to_string(), s.as_str().to_string())).collect();
        assert_eq!(named, expected);

        let group = |name: &str| -> Vec<String> {
            let at = text.find(&format!("CREATE FUNCTION onboarding._{name}(state text)")).expect(name);
            let list = text[at..].split("RETURN state IN (").nth(1).unwrap().split_once(");").unwrap().0;
            list.split(", ").map(|s| s.trim_matches('\'').to_string()).collect()
        };
        let of = |keep: fn(JobState) -> bool| -> Vec<String> {
            JobState::ALL.into_iter().filter(|s| keep(*s)).map(|s| s.as_str().to_string()).collect()
        };
        assert_eq!(group("is_open"), of(JobState::is_open));
        assert_eq!(group("is_final"), of(JobState::is_final));
        assert_eq!(group("is_done"), of(JobState::is_done));
    }

    /// The SQL trigger's table of moves (sql/) must be this one.
    #[test]
    fn sql_state_machine_matches() {
        let sql_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let mut found = None;
        for entry in std::fs::read_dir(&sql_dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("onboarding--") || path.is_dir() {
                continue; // released and upgrade scripts (sql/upgrades/): history, not the current definition
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if let Some(start) = text.find("-- state machine: moves begin") {
                let end = text[start..].find("-- state machine: moves end").expect("end marker") + start;
                found = Some(text[start..end].to_string());
            }
        }
        let table = found.expect("no '-- state machine: moves begin' block in sql/");
        let mut sql_edges: Vec<(String, String)> = table
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_end_matches(',');
                let inner = l.strip_prefix("('")?.strip_suffix("')")?;
                let (from, to) = inner.split_once("', '")?;
                Some((from.to_string(), to.to_string()))
            })
            .collect();
        sql_edges.sort();
        let mut rust_edges: Vec<(String, String)> = JobState::ALL
            .into_iter()
            .flat_map(|from| {
                from.may_become().iter().map(move |to| (from.as_str().to_string(), to.as_str().to_string()))
            })
            .collect();
        rust_edges.sort();
        assert_eq!(sql_edges, rust_edges);
    }
}
