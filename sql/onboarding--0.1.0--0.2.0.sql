-- onboarding 0.1.0 -> 0.2.0, run by ALTER EXTENSION onboarding UPDATE (after the 0.2.0 package is
-- installed and PostgreSQL restarted). Keeps every job, event, intake row and attachment.
-- Until this commits, the 0.2.0 workers wait (src/release.rs); its commit wakes them.
-- tests/upgrade.rs checks that this gives the schema of a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION onboarding UPDATE TO '0.2.0'" to load this file. \quit

------------------------------------------------------------------------------------------------
-- 1. The state machine's invariants. Rows an older release could leave inconsistent are
--    repaired first (none should be: 0.1.0 set these fields by hand), then the checks hold.
------------------------------------------------------------------------------------------------
UPDATE onboarding.jobs SET finished_at = coalesce(finished_at, updated_at)
 WHERE state NOT IN ('pending', 'running') AND finished_at IS NULL;
UPDATE onboarding.jobs SET finished_at = NULL WHERE state IN ('pending', 'running') AND finished_at IS NOT NULL;
UPDATE onboarding.jobs SET claimed_by = NULL WHERE state <> 'running' AND claimed_by IS NOT NULL;
-- A running job that names no worker could never be taken back: it runs again, same key.
UPDATE onboarding.jobs SET state = 'pending', run_at = now() WHERE state = 'running' AND claimed_by IS NULL;
ALTER TABLE onboarding.jobs
    ADD CONSTRAINT jobs_finished_exactly_when_final CHECK ((finished_at IS NULL) = (state IN ('pending', 'running'))),
    ADD CONSTRAINT jobs_claimed_exactly_while_running CHECK ((claimed_by IS NOT NULL) = (state = 'running')),
    ADD CONSTRAINT jobs_object_named_where_needed CHECK (stripe_id IS NOT NULL OR (state <> 'orphaned' AND
        kind NOT IN ('delete_customer', 'update_customer_email', 'delete_connect_account')));

------------------------------------------------------------------------------------------------
-- 2. The state machine: the moves, and the trigger every state change goes through
--    (as in sql/job_states.sql).
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- 3. Transitions that stamped finished_at/updated_at by hand: the trigger does it now.
------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION onboarding.retry(job_id bigint) RETURNS SETOF onboarding.jobs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
    open_job bigint;
BEGIN
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'onboarding.retry: job_id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO j FROM onboarding.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding.retry: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF j.state NOT IN ('dead', 'cancelled') THEN
        RAISE EXCEPTION 'onboarding.retry: job % is %, only dead or cancelled jobs can be retried', job_id, j.state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE j.state WHEN 'pending' THEN 'It is already queued.'
                                      WHEN 'running' THEN 'It is being worked on right now.'
                                      ELSE 'It has finished.' END;
    END IF;
    SELECT o.id INTO open_job FROM onboarding.jobs o
     WHERE o.profile_table = j.profile_table AND o.kind = j.kind AND o.user_id = j.user_id
       AND o.stripe_id IS NOT DISTINCT FROM j.stripe_id AND o.state IN ('pending', 'running');
    IF FOUND THEN
        RAISE EXCEPTION 'onboarding.retry: job % for user % is already open for the same work', open_job, j.user_id
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Wait for that job instead.';
    END IF;
    UPDATE onboarding.jobs
       SET state = 'pending', attempts = 0, run_at = now()
     WHERE id = job_id RETURNING * INTO j;
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (j.id, j.user_id, 'retried', jsonb_build_object('by', session_user::text));
    PERFORM onboarding._wake_worker_after_commit();
    RETURN NEXT j;
END $$;

CREATE OR REPLACE FUNCTION onboarding.cancel(job_id bigint) RETURNS SETOF onboarding.jobs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
BEGIN
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'onboarding.cancel: job_id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO j FROM onboarding.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding.cancel: no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF j.state <> 'pending' THEN
        RAISE EXCEPTION 'onboarding.cancel: job % is %, only pending jobs can be cancelled', job_id, j.state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN j.state = 'running' THEN 'Its Stripe call is in flight; let it finish.'
                              ELSE 'It is no longer waiting.' END;
    END IF;
    UPDATE onboarding.jobs SET state = 'cancelled'
     WHERE id = job_id RETURNING * INTO j;
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (j.id, j.user_id, 'cancelled', jsonb_build_object('by', session_user::text));
    RETURN NEXT j;
END $$;

CREATE OR REPLACE FUNCTION onboarding._claim_jobs(max_jobs integer, horizon interval)
RETURNS TABLE (job_id bigint, kind text, user_id text, idempotency_key text, attempts integer,
               stripe_id text, request_params jsonb, look_up_first boolean,
               profile_found boolean, email text, customer_id text, connect_account_id text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job onboarding.jobs;
    a onboarding.attachments;
    rows_read bigint;
BEGIN
    FOR job IN
        WITH due AS (
            SELECT j.id FROM onboarding.jobs j
             WHERE j.state = 'pending' AND j.run_at <= now()
             ORDER BY j.run_at, j.id
             LIMIT max_jobs
             FOR UPDATE SKIP LOCKED)
        UPDATE onboarding.jobs j
           SET state = 'running', attempts = j.attempts + 1, claimed_by = pg_backend_pid(),
               claimed_at = now(), first_attempt_at = coalesce(j.first_attempt_at, now())
          FROM due WHERE j.id = due.id
        RETURNING j.*
    LOOP
        INSERT INTO onboarding.events (job_id, user_id, step, detail)
        VALUES (job.id, job.user_id, 'claimed', jsonb_build_object('attempt', job.attempts, 'worker_pid', pg_backend_pid()));
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = job.profile_table;
        IF NOT FOUND THEN
            PERFORM onboarding._finish_job(job.id, 'skipped', 'skipped',
                jsonb_build_object('reason', format('table %s is no longer attached', job.profile_table)));
            CONTINUE;
        END IF;
        job_id := job.id; kind := job.kind; user_id := job.user_id;
        idempotency_key := job.idempotency_key; attempts := job.attempts; stripe_id := job.stripe_id;
        request_params := job.request_params;
        look_up_first := job.first_attempt_at < now() - horizon
                         OR job.last_error_detail->>'type' = 'idempotency_error';
        BEGIN
            EXECUTE format('SELECT %I::text, %I::text, %s FROM %s WHERE %I = $1::%s',
                    a.email_column, a.customer_column, coalesce(quote_ident(a.connect_account_column) || '::text', 'NULL'),
                    a.profile_table, a.id_column, a.id_type)
               INTO email, customer_id, connect_account_id USING job.user_id;
            GET DIAGNOSTICS rows_read = ROW_COUNT;  -- EXECUTE does not set FOUND
            profile_found := rows_read = 1;
        EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
            -- A user id that cannot be an id of this table (say, an orphan's metadata): no profile.
            profile_found := false; email := NULL; customer_id := NULL; connect_account_id := NULL;
        WHEN OTHERS THEN
            PERFORM onboarding._finish_job(job.id, 'dead', 'dead',
                jsonb_build_object('reason', 'could not read the profile: ' || SQLERRM, 'sqlstate', SQLSTATE),
                error => 'could not read the profile: ' || SQLERRM);
            CONTINUE;
        END;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION onboarding._finish_job(job bigint, new_state text, step text, detail jsonb,
                                       stripe_id text DEFAULT NULL, error text DEFAULT NULL,
                                       retry_in interval DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid text;
BEGIN
    UPDATE onboarding.jobs j
       SET state = new_state,
           stripe_id = coalesce(_finish_job.stripe_id, j.stripe_id),
           last_error = coalesce(error, j.last_error),
           last_error_detail = CASE WHEN error IS NULL THEN j.last_error_detail ELSE detail END,
           run_at = CASE WHEN new_state = 'pending' THEN now() + coalesce(retry_in, '0') ELSE j.run_at END,
           claimed_by = NULL
     WHERE j.id = job AND j.state = 'running' AND j.claimed_by = pg_backend_pid()
    RETURNING j.user_id INTO uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: job % is not running in this worker (taken back after its lease?)', job
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO onboarding.events (job_id, user_id, step, detail) VALUES (job, uid, step, detail);
END $$;

CREATE OR REPLACE FUNCTION onboarding._link_objects(job_ids bigint[], objects text[]) RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    a onboarding.attachments;
    target_column name;
    written bigint[] := '{}';
    linked bigint[];
    changed bigint[];
    j onboarding.jobs;
BEGIN
    FOR target IN SELECT DISTINCT x.profile_table, x.kind FROM onboarding.jobs x
                   WHERE x.id = ANY (job_ids) AND x.kind IN ('create_customer', 'create_connect_account') LOOP
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = target.profile_table;
        target_column := CASE target.kind WHEN 'create_customer' THEN a.customer_column
                                          ELSE a.connect_account_column END;
        CONTINUE WHEN target_column IS NULL;  -- detached, or no Connect column
        EXECUTE format($sql$
            WITH mine AS (
                SELECT x.id, x.user_id, o.object, x.request_params->>'email' AS sent_email
                  FROM unnest($1, $2) AS o(id, object) JOIN onboarding.jobs x ON x.id = o.id
                 WHERE x.profile_table = %1$L::regclass AND x.kind = %7$L
                   AND x.state = 'running' AND x.claimed_by = pg_backend_pid()),
            linked AS (
                UPDATE %1$s p SET %3$I = m.object FROM mine m
                 WHERE p.%2$I = m.user_id::%4$s AND p.%3$I IS NULL
                RETURNING m.id, m.user_id, m.object, m.sent_email, p.%5$I::text AS email),
            finished AS (
                UPDATE onboarding.jobs x
                   SET state = 'succeeded', stripe_id = l.object, claimed_by = NULL
                  FROM linked l WHERE x.id = l.id
                RETURNING x.id),
            logged AS (
                INSERT INTO onboarding.events (job_id, user_id, step, detail)
                SELECT l.id, l.user_id, 'written_back',
                       jsonb_build_object('stripe_id', l.object, 'table', %6$L, 'column', %3$L)
                  FROM linked l ORDER BY l.id)
            SELECT coalesce(array_agg(l.id), '{}'),
                   coalesce(array_agg(l.id) FILTER (WHERE btrim(l.email) IS DISTINCT FROM l.sent_email), '{}')
              FROM linked l $sql$,
            a.profile_table, a.id_column, target_column, a.id_type, a.email_column, a.profile_table::text,
            target.kind)
        INTO linked, changed USING job_ids, objects;
        written := written || linked;
        -- The email changed after the customer was sent: the customer follows.
        IF target.kind = 'create_customer' AND cardinality(changed) > 0 AND onboarding._sync_email_enabled() THEN
            FOR j IN SELECT * FROM onboarding.jobs x WHERE x.id = ANY (changed) LOOP
                PERFORM onboarding._enqueue_for_customer(j.profile_table, j.user_id, 'update_customer_email',
                                                         j.stripe_id, 'email changed during creation');
            END LOOP;
        END IF;
    END LOOP;
    RETURN written;
END $$;

CREATE OR REPLACE FUNCTION onboarding._requeue_abandoned(max_attempts integer, lease interval) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    requeued integer;
BEGIN
    WITH abandoned AS (
        UPDATE onboarding.jobs j
           SET state = CASE WHEN j.attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
               run_at = now(), claimed_by = NULL,
               last_error = CASE WHEN j.attempts >= max_attempts
                            THEN 'the worker exited during every attempt' ELSE j.last_error END
         WHERE j.state = 'running'
           AND (j.claimed_at < now() - lease
                OR NOT EXISTS (SELECT FROM pg_stat_activity s WHERE s.pid = j.claimed_by))
        RETURNING j.id, j.user_id, j.state, j.attempts)
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT id, user_id, CASE state WHEN 'dead' THEN 'dead' ELSE 'requeued' END,
           jsonb_build_object('reason', 'the worker that claimed it exited or overran its lease', 'attempts', attempts)
      FROM abandoned;
    GET DIAGNOSTICS requeued = ROW_COUNT;
    RETURN requeued;
END $$;

------------------------------------------------------------------------------------------------
-- 4. Privileges of the new functions (sql/privileges.sql: nothing for PUBLIC).
------------------------------------------------------------------------------------------------
REVOKE EXECUTE ON FUNCTION onboarding._job_may_become(text, text), onboarding._job_state_machine() FROM PUBLIC;
-- 0.1.0 left the insert trigger's function open to PUBLIC, so that any role could put the trigger
-- on a table of its own and write into the intake. EXECUTE on a trigger function is checked only at
-- CREATE TRIGGER (attach()), so applications' inserts are not affected.
REVOKE EXECUTE ON FUNCTION onboarding._intake_profile() FROM PUBLIC;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
