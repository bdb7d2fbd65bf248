-- The job state machine, the SQL twin of core/src/state.rs: the moves a job may make, and the
-- trigger that every change of onboarding.jobs.state goes through (whatever statement makes it:
-- the worker's batched updates, retry, cancel, a DBA's UPDATE). It refuses any other move and
-- keeps the timestamps right, so no function sets finished_at or updated_at by hand.

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
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- The WHEN clauses call the function only where there is a move to check: not for a new job that
-- starts pending (the CHECKs cover its timestamps), nor for an update that leaves the state alone.
-- bench/perf 2b measures what the state machine costs the worker (1.3x at 0 ms Stripe in 0.2.0).
CREATE TRIGGER jobs_state_machine_on_insert BEFORE INSERT ON onboarding.jobs
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM 'pending') EXECUTE FUNCTION onboarding._job_state_machine();
CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON onboarding.jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION onboarding._job_state_machine();
