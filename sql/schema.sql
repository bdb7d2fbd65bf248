-- onboarding: the tables, their indexes and comments. Run first (bootstrap: see src/lib.rs); the
-- other files of sql/ hold the functions and views over these tables, each by concern.
-- Everything lives in schema `onboarding` (from onboarding.control). Privileges are granted and
-- revoked in one place only, sql/privileges.sql, run last.

-- Which application tables are attached, and which of their columns hold what.
CREATE TABLE onboarding.attachments (
    profile_table regclass PRIMARY KEY,
    id_column name NOT NULL,
    id_type regtype NOT NULL,
    email_column name NOT NULL,
    customer_column name NOT NULL,
    connect_account_column name,
    -- When to create an Express Connect account (after the customer): never, always, or when
    -- connect_condition (a boolean SQL expression over the profile row) is true.
    connect_policy text NOT NULL DEFAULT 'never' CHECK (connect_policy IN ('never', 'always', 'when')),
    connect_condition text,
    attached_at timestamptz NOT NULL DEFAULT now(),
    -- When Stripe says a customer of this table changed outside the extension (sql/inbound.sql,
    -- set_stripe_change_policy): deleted, flag it (an event and an audit line) or recreate it;
    -- its email changed, leave the profile as the source of truth (audit) or copy it there.
    on_customer_deleted text NOT NULL DEFAULT 'flag' CHECK (on_customer_deleted IN ('flag', 'recreate')),
    on_stripe_email_changed text NOT NULL DEFAULT 'audit'
        CHECK (on_stripe_email_changed IN ('audit', 'update_profile')),
    -- Boolean profile columns kept in step with the Connect account's readiness, by what they
    -- hold: {"ready": column, "payouts_enabled": column, ...} (attach's readiness_columns).
    readiness_columns jsonb,
    -- Which Stripe objects its profiles get (attach's stripe_objects). 'v1': a Customer, and by
    -- the Connect policy an Express Connect account, a second object. 'accounts_v2': one Accounts
    -- v2 Account, made with the customer configuration; customer_column holds its id (the Account
    -- is the customer: `customer_account`), and the Connect policy adds the merchant and recipient
    -- configurations to it, then writes the same id to connect_account_column.
    stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2')),
    -- accounts_v2: the column sent as the Account's display_name (NULL: none is sent).
    display_name_column name,
    -- accounts_v2: what its Accounts get (set_account_options), in the stored form of
    -- core/src/stripe/v2/options.rs: the Dashboard and responsibilities sent at creation, the
    -- configurations and capabilities the Connect policy adds. NULL for v1 tables.
    account_options jsonb,
    CONSTRAINT attachments_options_only_for_accounts_v2
        CHECK ((stripe_objects = 'accounts_v2') = (account_options IS NOT NULL)
               AND (display_name_column IS NULL OR stripe_objects = 'accounts_v2'))
);

-- The transactional outbox: one row per unit of Stripe work.
CREATE TABLE onboarding.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- delete_customer compensates: it deletes a customer (stripe_id) that no profile can use;
    -- update_customer_email copies a changed profile email to its customer (stripe_id).
    kind text NOT NULL CHECK (kind IN ('create_customer', 'delete_customer', 'update_customer_email',
                                       'create_connect_account', 'delete_connect_account')),
    profile_table regclass NOT NULL,
    user_id text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'succeeded', 'skipped', 'orphaned', 'dead', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0,
    -- Fixed before the first attempt and reused by every retry and restart.
    -- Random, so unique without an index to maintain on every insert.
    idempotency_key text NOT NULL DEFAULT 'onboarding-' || gen_random_uuid(),
    run_at timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    -- What the first attempt sent; every retry sends exactly this again under the same key.
    request_params jsonb,
    stripe_id text,
    last_error text,
    last_error_detail jsonb,
    claimed_by integer,
    claimed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- Look for the job's Stripe object before creating one: set for jobs an old primary may have
    -- attempted before a promotion (sql/failover.sql); the horizon and idempotency errors add to it.
    look_up_first boolean NOT NULL DEFAULT false,
    -- With claimed_by, who holds a running job: the claiming worker's start time (pid and start
    -- together name one process; a pid alone can be reused, or be another server's after failover).
    claimer_started_at timestamptz,
    -- A creation job's object, made (or adopted) but not yet on its profile because another
    -- transaction held the profile's row: the next claim writes it back, with no Stripe call.
    object_to_link text,
    -- Priority lane, claimed lowest first (onboarding._lane): 0 signups and the application's
    -- requests, 1 retries, 2 email syncs and compensation, 3 backfill and reconcile.
    lane smallint NOT NULL DEFAULT 0,
    -- An account job made by a 'when' Connect policy: the worker checks the condition when it
    -- claims the job (never in the application's UPDATE), so a slow condition delays only it.
    conditional boolean NOT NULL DEFAULT false,
    -- Invariants of the state machine (sql/job_states.sql makes every move).
    CONSTRAINT jobs_finished_exactly_when_final CHECK ((finished_at IS NULL) = (state IN ('pending', 'running'))),
    CONSTRAINT jobs_claimed_exactly_while_running CHECK ((claimed_by IS NOT NULL) = (state = 'running')),
    CONSTRAINT jobs_object_named_where_needed CHECK (stripe_id IS NOT NULL OR (state <> 'orphaned' AND
        kind NOT IN ('delete_customer', 'update_customer_email', 'delete_connect_account')))
);
COMMENT ON TABLE onboarding.jobs IS
    'Stripe work for profiles: pending -> running -> succeeded | skipped | orphaned | dead | cancelled (or back to pending to retry)';
-- At most one open job per profile, kind and target: enqueueing twice joins the open job.
-- (Creation jobs have no stripe_id while open; compensation jobs name the customer they delete.)
CREATE UNIQUE INDEX jobs_one_open_per_target ON onboarding.jobs (profile_table, kind, user_id, coalesce(stripe_id, ''))
    WHERE state IN ('pending', 'running');
CREATE INDEX jobs_due ON onboarding.jobs (lane, run_at, id) WHERE state = 'pending';
-- Maintenance reads only what it acts on, however long the history: the running jobs it may take
-- back (rescue), and the finished ones retention may prune (_is_done's states), oldest first.
CREATE INDEX jobs_running ON onboarding.jobs (claimed_at) WHERE state = 'running';
CREATE INDEX jobs_done_by_finished_at ON onboarding.jobs (finished_at) WHERE state IN ('succeeded', 'skipped', 'cancelled');
CREATE INDEX jobs_by_user ON onboarding.jobs (user_id);

-- The operation sequence: one row per step, in order.
CREATE TABLE onboarding.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The job (NULL for actions outside a job, such as reconcile). Not a foreign key: the insert
    -- trigger's cost matters more than the check, and jobs are only deleted with their events.
    job_id bigint,
    user_id text NOT NULL,
    step text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_job ON onboarding.events (job_id, id);
CREATE INDEX events_by_user ON onboarding.events (user_id, id);
-- Retention of the events outside any job (what Stripe said of accounts and customers, reconcile).
CREATE INDEX events_outside_jobs ON onboarding.events (at) WHERE job_id IS NULL;

-- The insert trigger's outbox (see src/intake.rs): one row per inserted profile without a
-- customer, written in the inserting transaction by onboarding._intake_profile() with a plain heap
-- insert. It must stay index-, trigger- and constraint-free; the worker promotes committed rows to
-- jobs within milliseconds (_promote_intake), so it is normally empty.
CREATE TABLE onboarding.intake (
    profile_table regclass NOT NULL,
    user_id text NOT NULL,
    -- Start of the inserting transaction.
    enqueued_at timestamptz NOT NULL
);
COMMENT ON TABLE onboarding.intake IS
    'Inserted profiles awaiting promotion to create_customer jobs by the worker (normally empty)';

-- One row per run of onboarding.backfill (sql/operations.sql), which onboarding.backfill_progress
-- reports on.

CREATE TABLE onboarding.backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_table regclass NOT NULL,
    total bigint NOT NULL,
    enqueued bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

------------------------------------------------------------------------------------------------
-- What Stripe holds: a snapshot of every customer and Connect account (taken by a worker, which
-- alone has the key), for the audits that compare Stripe with the profiles.
------------------------------------------------------------------------------------------------

CREATE TABLE onboarding.stripe_snapshots (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    pages integer NOT NULL DEFAULT 0,
    customers integer NOT NULL DEFAULT 0,
    accounts integer NOT NULL DEFAULT 0,
    -- False when the snapshot holds customers only: Connect is not in use (no Connect policy,
    -- account or job: src/tables.rs), or Stripe refused to list accounts (a Stripe account that
    -- is not a Connect platform, a key without Connect's read permission), as
    -- accounts_not_listed_why says. The audits then check customers only, and say so.
    accounts_listed boolean NOT NULL DEFAULT true,
    accounts_not_listed_why text
);
CREATE TABLE onboarding.stripe_objects (
    snapshot bigint NOT NULL REFERENCES onboarding.stripe_snapshots (id) ON DELETE CASCADE,
    id text NOT NULL,
    -- customer, account (v1's), account_v2 (an Accounts v2 Account of an accounts_v2 table).
    object text NOT NULL CHECK (object IN ('customer', 'account', 'account_v2')),
    user_id text,
    email text,
    PRIMARY KEY (snapshot, id)
);
CREATE INDEX stripe_objects_by_user ON onboarding.stripe_objects (snapshot, user_id);

------------------------------------------------------------------------------------------------
-- Failover: the WAL timelines the workers of this database have run on (sql/failover.sql). A new
-- timeline means the server was promoted; its row records the sweep of Stripe for objects an old
-- primary created for commits that never reached this one.
------------------------------------------------------------------------------------------------

CREATE TABLE onboarding.timelines (
    timeline integer PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now(),
    -- The timeline before the promotion (NULL: the first one the workers saw).
    promoted_from integer,
    -- Stripe objects created from this time on are checked against the profiles.
    sweep_from timestamptz,
    swept_at timestamptz,
    objects_checked integer NOT NULL DEFAULT 0,
    orphans_found integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE onboarding.timelines IS
    'WAL timelines the workers ran on; after a promotion, the sweep for objects the old primary left behind';
