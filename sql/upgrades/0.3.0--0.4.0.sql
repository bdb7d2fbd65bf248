-- onboarding 0.3.0 -> 0.4.0 (ALTER EXTENSION onboarding UPDATE): what 0.4.0 changes in the schema,
-- by concern, in the order it lands. Only what cannot be derived is written here (table changes,
-- data moves, drops of changed signatures, grants); each replaced function, procedure, view or
-- trigger is named on a line `-- @replace <schema.name>` and filled in from where sql/ defines it
-- (tests/support/upgrade_script.rs).

-- sql/inbound.sql: with no profile write waiting, the profile writer sleeps instead of running its
-- pass back to back ("none" had read as "due now").
-- @replace onboarding._profile_writes_due_in

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
