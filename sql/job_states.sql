-- The job state machine, the SQL twin of core/src/state.rs: the moves a job may make, and the
-- trigger that every change of onboarding.jobs.state goes through (whatever statement makes it:
-- the worker's batched updates, retry, cancel, a DBA's UPDATE). It refuses any other move and
-- keeps the timestamps right, so no function sets finished_at or updated_at by hand.

-- The states by name. Every function outside this file names a state through these (and the
-- groups below) instead of spelling it: SQL functions with a constant body, which the planner
-- inlines and folds to the literal, so they cost nothing at run time and the partial indexes on
-- state (jobs_due, jobs_one_open_per_target) still match. The list is JobState's (core's tests).
-- state machine: states begin
CREATE FUNCTION onboarding._pending() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'pending';
CREATE FUNCTION onboarding._running() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'running';
CREATE FUNCTION onboarding._succeeded() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'succeeded';
CREATE FUNCTION onboarding._skipped() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'skipped';
CREATE FUNCTION onboarding._orphaned() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'orphaned';
CREATE FUNCTION onboarding._dead() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'dead';
CREATE FUNCTION onboarding._cancelled() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 'cancelled';
-- state machine: states end

-- Open: the job has work left (pending or running); at most one per target (jobs_one_open_per_target).
CREATE FUNCTION onboarding._is_open(state text) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN state IN ('pending', 'running');
-- Final: the job has finished, one way or another (JobState::is_final); finished_at is set.
CREATE FUNCTION onboarding._is_final(state text) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN state IN ('succeeded', 'skipped', 'orphaned', 'dead', 'cancelled');
-- Done: finished with nothing left for anyone to do, so retention may prune it (dead and orphaned
-- jobs wait for a human).
CREATE FUNCTION onboarding._is_done(state text) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN state IN ('succeeded', 'skipped', 'cancelled');

-- Whether a job in from_state may move to to_state (NULL from_state: a new job). The list between
-- the markers is compared with JobState::may_become by core's tests.
CREATE FUNCTION onboarding._job_may_become(from_state text, to_state text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN from_state IS NULL THEN to_state = 'pending'
                ELSE (from_state, to_state) IN (
                    -- state machine: moves begin
                    ('pending', 'running'),
                    ('pending', 'cancelled'),
                    ('running', 'pending'),
                    ('running', 'succeeded'),
                    ('running', 'skipped'),
                    ('running', 'orphaned'),
                    ('running', 'dead'),
                    ('dead', 'pending'),
                    ('cancelled', 'pending')
                    -- state machine: moves end
                ) END;
$$;

-- BEFORE INSERT or UPDATE OF state on onboarding.jobs, through the triggers below: checks the
-- move, sets finished_at exactly when the job reaches a final state (cleared when a DBA retries
-- it) and stamps updated_at (the time of the last move).
CREATE FUNCTION onboarding._job_state_machine() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT onboarding._job_may_become(CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state) THEN
        RAISE EXCEPTION 'onboarding: job % cannot go from % to %', NEW.id,
                CASE WHEN TG_OP = 'UPDATE' THEN OLD.state ELSE 'nothing' END, NEW.state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Jobs start pending and go pending -> running -> succeeded, skipped, orphaned or dead '
                         '(or back to pending to retry); cancel() stops a pending job and retry() brings back '
                         'a dead or cancelled one.';
    END IF;
    NEW.finished_at := CASE WHEN NEW.state IN ('pending', 'running') THEN NULL ELSE coalesce(NEW.finished_at, now()) END;
    IF NEW.state = 'pending' THEN
        -- Back in the queue, maybe before where the workers' claims start: they look from the
        -- front once this commits (src/wake.rs).
        PERFORM onboarding._wake_worker_after_commit();
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- The WHEN clauses call the function only where there is a move to check: not for a new job that
-- starts pending (the CHECKs cover its timestamps), nor for an update that leaves the state alone.
-- bench/perf 2b measures what it costs the worker: about 12 us per job (two moves), 4 % at 0 ms Stripe.
CREATE TRIGGER jobs_state_machine_on_insert BEFORE INSERT ON onboarding.jobs
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM 'pending') EXECUTE FUNCTION onboarding._job_state_machine();
CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON onboarding.jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION onboarding._job_state_machine();
