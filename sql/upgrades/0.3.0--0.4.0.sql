-- onboarding 0.3.0 -> 0.4.0 (ALTER EXTENSION onboarding UPDATE): what 0.4.0 changes in the schema,
-- by concern, in the order it lands. Only what cannot be derived is written here (table changes,
-- data moves, drops of changed signatures, grants); each replaced function, procedure, view or
-- trigger is named on a line `-- @replace <schema.name>` and filled in from where sql/ defines it
-- (tests/support/upgrade_script.rs).

-- sql/inbound.sql: with no profile write waiting, the profile writer sleeps instead of running its
-- pass back to back ("none" had read as "due now").
-- @replace onboarding._profile_writes_due_in

-- sql/inbound.sql: a reader stopped in the middle of a poll (restart, crash, failover) no longer
-- keeps the events reader's turn for a minute: the next poll takes it over once its holder is gone;
-- a disconnected account is no longer read from Stripe at every poll or daily.
DROP FUNCTION onboarding._events_poll_begin(integer, interval);  -- its result gains the v2 columns (issue 31)
-- @replace onboarding._events_poll_begin
REVOKE ALL ON FUNCTION onboarding._events_poll_begin(integer, interval) FROM PUBLIC;

-- sql/attach.sql: dropping an attached table also stops following its profiles' Connect accounts.
-- @replace onboarding._forget_dropped_tables

-- sql/operations.sql: reconcile no longer takes the audit's "not checked" line (accounts Stripe
-- refused to list) for an orphan with no id, which made reconcile(dry_run => false) fail.
-- @replace onboarding.reconcile

-- sql/api.sql: a profile the calling transaction updated (not inserted) is no longer refused with
-- 55000 "inserted by this transaction" by get_or_create_customer and create_account_link.
-- @replace onboarding._profile

-- sql/audits.sql: audit_mismatches(refresh => false) no longer reports an object the extension
-- made after the last snapshot began as "missing or deleted in Stripe".
-- @replace onboarding.audit_mismatches

-- sql/transitions.sql: the worker's claim and record are one statement each (fewer statements per
-- job): committed inserts promoted and due jobs claimed together, and when requests were sent
-- recorded with the created customers.
-- @replace onboarding._promote_and_claim
-- @replace onboarding._record_sent_and_created
REVOKE ALL ON FUNCTION onboarding._promote_and_claim(integer, integer, interval, timestamptz[], bigint[], integer[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION onboarding._record_sent_and_created(bigint[], integer[], double precision[], bigint[], text[],
                                                           jsonb[]) FROM PUBLIC;

-- sql/transitions.sql: an application transaction still open after enqueueing a job for a profile
-- no longer holds up every claim (their promotion waited for it, then failed): the promotion skips
-- that profile's insert until then.
-- @replace onboarding._promote_intake_rows
-- @replace onboarding._promote_intake
REVOKE ALL ON FUNCTION onboarding._promote_intake_rows(integer, tid) FROM PUBLIC;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();

-- src/stripe_key.rs, sql/audits.sql: onboarding.stats says how many workers run and whether their
-- Stripe key is usable (jobs waited for a missing or refused key with only the server log saying so).
-- @replace onboarding._worker_key_states
REVOKE ALL ON FUNCTION onboarding._worker_key_states() FROM PUBLIC;
-- @replace onboarding.stats_for

-- Issue 31, Accounts v2 (sql/schema.sql, sql/attach.sql, sql/transitions.sql): a table attached
-- with stripe_objects => 'accounts_v2' gets one Accounts v2 Account per profile. Existing tables
-- stay v1, unchanged.
ALTER TABLE onboarding.attachments
    ADD COLUMN stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2')),
    ADD COLUMN display_name_column name,
    ADD COLUMN account_options jsonb,
    ADD CONSTRAINT attachments_options_only_for_accounts_v2
        CHECK ((stripe_objects = 'accounts_v2') = (account_options IS NOT NULL)
               AND (display_name_column IS NULL OR stripe_objects = 'accounts_v2'));
DROP FUNCTION onboarding.attach(regclass, name, name, name, name, text, text, jsonb);
-- @replace onboarding.attach
REVOKE ALL ON FUNCTION onboarding.attach(regclass, name, name, name, name, text, text, jsonb, text, name) FROM PUBLIC;
-- @replace onboarding.set_account_options
REVOKE ALL ON FUNCTION onboarding.set_account_options(regclass, text[], text[], text, text, text) FROM PUBLIC;
-- @replace onboarding._account_options
REVOKE ALL ON FUNCTION onboarding._account_options(jsonb) FROM PUBLIC;
-- @replace onboarding._column_type
-- @replace onboarding._create_triggers
-- @replace onboarding.set_connect_policy
-- @replace onboarding._follow_account
-- sql/inbound.sql, src/maintenance/events.rs: an accounts_v2 table's connected Accounts are
-- followed as v1 accounts are: read on /v2/core/accounts, heard of through v2 thin events.
ALTER TABLE onboarding.connect_accounts
    ADD COLUMN stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2'));
ALTER TABLE onboarding.events_cursor ADD COLUMN v2_events_since bigint;
-- @replace onboarding._v2_events_read
REVOKE ALL ON FUNCTION onboarding._v2_events_read(bigint, boolean) FROM PUBLIC;
-- An accounts_v2 profile's Account changed in the Dashboard goes through its table's change policy.
-- @replace onboarding._v2_customers_changed
REVOKE ALL ON FUNCTION onboarding._v2_customers_changed(text[], text[]) FROM PUBLIC;
-- sql/audits.sql, sql/operations.sql, src/maintenance/snapshot.rs: the audits and reconcile
-- cover accounts_v2 tables, from v2 Accounts listed into the snapshot (object account_v2).
ALTER TABLE onboarding.stripe_objects DROP CONSTRAINT stripe_objects_object_check,
    ADD CONSTRAINT stripe_objects_object_check CHECK (object IN ('customer', 'account', 'account_v2'));
DROP FUNCTION onboarding._all_profiles();
-- @replace onboarding._all_profiles
REVOKE ALL ON FUNCTION onboarding._all_profiles() FROM PUBLIC;
-- @replace onboarding._snapshot_add
-- @replace onboarding.audit_orphans
-- sql/failover.sql, src/maintenance/failover.rs: the sweep after a promotion covers v2 Accounts.
-- @replace onboarding._has_accounts_v2_profile
REVOKE ALL ON FUNCTION onboarding._has_accounts_v2_profile(text) FROM PUBLIC;
-- @replace onboarding._check_after_failover
-- The claim returns each job's table's model and options (_promote_and_claim, new in 0.4.0, is
-- written above with them).
DROP FUNCTION onboarding._claim_jobs(integer, interval, timestamptz[], bigint[], integer[]);
-- @replace onboarding._claim_jobs
REVOKE ALL ON FUNCTION onboarding._claim_jobs(integer, interval, timestamptz[], bigint[], integer[]) FROM PUBLIC;
