-- onboarding: privileges, the one place that grants or revokes anything. Run last (finalize: see
-- src/lib.rs), after every table, view and function of sql/ and of the Rust code (#[pg_extern],
-- #[pg_trigger]) exists, so nothing created anywhere else escapes it. Nothing in schema onboarding
-- is open to PUBLIC: roles that operate, audit or call the API are granted what they need by the
-- DBA (README, "Roles and grants"; a test holds the README's list of what PUBLIC may execute, which
-- is empty, to the install).
--
-- Not even the insert trigger's function (onboarding._intake_profile): PostgreSQL checks EXECUTE on
-- a trigger function only at CREATE TRIGGER (attach(), run by the table's owner or a superuser),
-- not when the trigger fires, so applications insert without it; and open to PUBLIC it would let any
-- role put the trigger on its own table and write into onboarding.intake.

-- Tables and views (the queue, the event log, intake, attachments, backfills, the Stripe snapshot,
-- stats, backfill_progress): no rights for PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA onboarding FROM PUBLIC;
-- The identity sequences are left alone: a sequence's default privileges give PUBLIC nothing, so
-- a REVOKE would change no right, only write the owner's default into relacl.

-- Functions and procedures, those of sql/ and the Rust ones alike.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA onboarding FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Last statement of the install (kept here because only one block can run last): warn when the
-- workers will not run, and have the launcher start this database's workers.
------------------------------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT onboarding._worker_preloaded() THEN
        RAISE WARNING 'onboarding: the background worker is not running, so no Stripe customer will be created'
            USING HINT = 'Add onboarding to shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries = ''onboarding'') and restart PostgreSQL.';
    ELSIF coalesce(current_setting('onboarding.database'), '') NOT IN ('', current_database()) THEN
        RAISE WARNING 'onboarding: onboarding.database restricts the workers to database "%", not "%"',
                current_setting('onboarding.database'), current_database()
            USING HINT = 'Empty onboarding.database (ALTER SYSTEM RESET onboarding.database) and restart PostgreSQL to serve every database.';
    END IF;
    -- Once this commits, the launcher starts this database's workers.
    PERFORM onboarding._launch_after_commit();
END $$;
