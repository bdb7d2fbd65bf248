-- GENERATED from sql/upgrades/0.3.0--0.4.0.sql by scripts/upgrade-script: edit that file, not this one
-- (each replaced object's definition comes from where it is written once, in sql/).
-- onboarding 0.3.0 -> 0.4.0 (ALTER EXTENSION onboarding UPDATE): what 0.4.0 changes in the schema,
-- by concern, in the order it lands. Only what cannot be derived is written here (table changes,
-- data moves, drops of changed signatures, grants); each replaced function, procedure, view or
-- trigger is named on a line `-- @replace <schema.name>` and filled in from where sql/ defines it
-- (tests/support/upgrade_script.rs).

-- sql/inbound.sql: with no profile write waiting, the profile writer sleeps instead of running its
-- pass back to back ("none" had read as "due now").
-- onboarding._profile_writes_due_in, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._profile_writes_due_in() RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN due IS NOT NULL THEN greatest(extract(epoch FROM due - now()), 0)::float8 END
      FROM (SELECT least(
               (SELECT min(c.profile_retry_at) FROM onboarding.connect_accounts c WHERE c.profile_behind),
               (SELECT min(x.next_attempt_at) FROM onboarding.customer_changes x WHERE NOT x.handled)) AS due) next
$$;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
