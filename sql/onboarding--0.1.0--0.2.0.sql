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
-- 2. The state machine: the states by name, the moves, and the trigger every state change goes
--    through (as in sql/job_states.sql).
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- 3. Functions and views changed in 0.2.0: the trigger stamps finished_at/updated_at (no
--    transition does it by hand any more), and states are named by sql/job_states.sql.
------------------------------------------------------------------------------------------------

-- Enqueues `kind` for a profile, or returns the open job that already does it.
CREATE OR REPLACE FUNCTION onboarding._enqueue(tbl regclass, uid text, job_kind text, source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job bigint;
BEGIN
    LOOP
        SELECT j.id INTO job FROM onboarding.jobs j
         WHERE j.profile_table = tbl AND j.kind = job_kind AND j.user_id = uid AND j.stripe_id IS NULL
           AND onboarding._is_open(j.state);
        IF FOUND THEN
            RETURN job;
        END IF;
        INSERT INTO onboarding.jobs (kind, profile_table, user_id) VALUES (job_kind, tbl, uid)
        ON CONFLICT DO NOTHING RETURNING id INTO job;
        IF job IS NOT NULL THEN
            INSERT INTO onboarding.events (job_id, user_id, step, detail)
            VALUES (job, uid, 'enqueued', jsonb_build_object('source', source, 'table', tbl::text));
            PERFORM onboarding._wake_worker_after_commit();
            RETURN job;
        END IF;
        -- Lost a race with another enqueue: its job is open now; look again.
    END LOOP;
END $$;

-- The profile's Stripe IDs and its latest job of each kind.
CREATE OR REPLACE FUNCTION onboarding.profile_status(user_id text, profile_table regclass DEFAULT NULL)
RETURNS TABLE (stripe_customer_id text, stripe_connect_account_id text, kind text,
               job_id bigint, state text, attempts integer, last_error text, created_at timestamptz,
               finished_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments := onboarding._attachment(profile_table);
    profile jsonb := onboarding._profile(a, profile_status.user_id);
BEGIN
    RETURN QUERY
        SELECT profile->>'customer', profile->>'connect_account', k.kind,
               j.id, j.state, j.attempts, j.last_error, j.created_at, j.finished_at
          FROM (SELECT DISTINCT x.kind FROM onboarding.jobs x
                 WHERE x.profile_table = a.profile_table AND x.user_id = profile_status.user_id
                UNION SELECT 'create_customer') k
          LEFT JOIN LATERAL (
                -- An insert the worker has not promoted to a job yet: pending, without a job id.
                SELECT NULL::bigint AS id, onboarding._pending() AS state, 0 AS attempts, NULL::text AS last_error,
                       i.enqueued_at AS created_at, NULL::timestamptz AS finished_at, 0 AS rank
                  FROM onboarding.intake i
                 WHERE k.kind = 'create_customer' AND i.profile_table = a.profile_table
                   AND i.user_id = profile_status.user_id
                UNION ALL
                SELECT x.id, x.state, x.attempts, x.last_error, x.created_at, x.finished_at, 1
                  FROM onboarding.jobs x
                 WHERE x.profile_table = a.profile_table AND x.user_id = profile_status.user_id AND x.kind = k.kind
                 ORDER BY rank, id DESC LIMIT 1) j ON true
         ORDER BY k.kind;
END $$;

-- Statement-level AFTER DELETE trigger: deleting a profile deletes its Stripe customer (and Connect
-- account) when this extension created it (a succeeded creation job names it) and no other row of
-- the table uses it. Off with onboarding.delete_customers_with_profiles = off.
-- TG_ARGV: id, customer and Connect account column ('' when none).
CREATE OR REPLACE FUNCTION onboarding._compensate_deleted_profiles() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT coalesce(current_setting('onboarding.delete_customers_with_profiles', true), 'on')::boolean THEN
        RETURN NULL;
    END IF;
    -- Once for the customer column, once for the Connect account column (if the table has one).
    FOR i IN 1..2 LOOP
        CONTINUE WHEN coalesce(TG_ARGV[i], '') = '';
        EXECUTE format($sql$
            SELECT count(onboarding._enqueue_for_customer(%1$s::oid, d.%2$I::text, %5$L, d.%3$I, 'profile deleted'))
              FROM onboarding_deleted_profiles d
             WHERE d.%3$I IS NOT NULL
               AND EXISTS (SELECT FROM onboarding.jobs c
                            WHERE c.profile_table = %1$s::oid AND c.kind = %6$L
                              AND c.user_id = d.%2$I::text AND c.state = onboarding._succeeded() AND c.stripe_id = d.%3$I)
               AND NOT EXISTS (SELECT FROM %4$s other WHERE other.%3$I = d.%3$I) $sql$,
            TG_RELID, TG_ARGV[0], TG_ARGV[i], TG_RELID::regclass,
            CASE i WHEN 1 THEN 'delete_customer' ELSE 'delete_connect_account' END,
            CASE i WHEN 1 THEN 'create_customer' ELSE 'create_connect_account' END);
    END LOOP;
    RETURN NULL;
END $$;

-- Claims up to max_jobs due jobs (committed by the caller before any Stripe call) and reads each
-- one's profile. A job whose table is gone, detached or unreadable is finished here, not returned.
-- look_up_first: Stripe may have pruned the idempotency key (first attempt older than `horizon`)
-- or refused it (idempotency_error): look the object up before creating anything.
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
             WHERE j.state = onboarding._pending() AND j.run_at <= now()
             ORDER BY j.run_at, j.id
             LIMIT max_jobs
             FOR UPDATE SKIP LOCKED)
        UPDATE onboarding.jobs j
           SET state = onboarding._running(), attempts = j.attempts + 1, claimed_by = pg_backend_pid(),
               claimed_at = now(), first_attempt_at = coalesce(j.first_attempt_at, now())
          FROM due WHERE j.id = due.id
        RETURNING j.*
    LOOP
        INSERT INTO onboarding.events (job_id, user_id, step, detail)
        VALUES (job.id, job.user_id, 'claimed', jsonb_build_object('attempt', job.attempts, 'worker_pid', pg_backend_pid()));
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = job.profile_table;
        IF NOT FOUND THEN
            PERFORM onboarding._finish_job(job.id, onboarding._skipped(), 'skipped',
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
            PERFORM onboarding._finish_job(job.id, onboarding._dead(), 'dead',
                jsonb_build_object('reason', 'could not read the profile: ' || SQLERRM, 'sqlstate', SQLSTATE),
                error => 'could not read the profile: ' || SQLERRM);
            CONTINUE;
        END;
        RETURN NEXT;
    END LOOP;
END $$;

-- Records an event and moves a running job to `new_state`. `retry_in` schedules a pending retry.
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
           run_at = CASE WHEN new_state = onboarding._pending() THEN now() + coalesce(retry_in, '0') ELSE j.run_at END,
           claimed_by = NULL
     WHERE j.id = job AND j.state = onboarding._running() AND j.claimed_by = pg_backend_pid()
    RETURNING j.user_id INTO uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: job % is not running in this worker (taken back after its lease?)', job
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO onboarding.events (job_id, user_id, step, detail) VALUES (job, uid, step, detail);
END $$;

-- Writes created (or adopted) customers and Connect accounts back to their profiles, set-based:
-- for each of this worker's running creation jobs, the object goes to the profile's column where it
-- is still NULL, the job is finished (written_back), and a customer whose profile email changed
-- after it was sent gets an email update. Returns the jobs written back; _write_back handles the
-- others (profile gone or linked elsewhere).
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
                   AND x.state = onboarding._running() AND x.claimed_by = pg_backend_pid()),
            linked AS (
                UPDATE %1$s p SET %3$I = m.object FROM mine m
                 WHERE p.%2$I = m.user_id::%4$s AND p.%3$I IS NULL
                RETURNING m.id, m.user_id, m.object, m.sent_email, p.%5$I::text AS email),
            finished AS (
                UPDATE onboarding.jobs x
                   SET state = onboarding._succeeded(), stripe_id = l.object, claimed_by = NULL
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

-- Writes a created (or adopted) customer or Connect account back to its profile (_link_objects)
-- and finishes the job. Returns what happened: written_back, already_linked, linked_elsewhere,
-- profile_gone. An object no profile can use is queued for deletion.
CREATE OR REPLACE FUNCTION onboarding._write_back(job bigint, object_id text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
    a onboarding.attachments;
    target_column name;
    compensation text;
    current_id text;
    found_profile boolean;
BEGIN
    IF job = ANY (onboarding._link_objects(ARRAY[job], ARRAY[object_id])) THEN
        RETURN 'written_back';
    END IF;
    SELECT * INTO j FROM onboarding.jobs WHERE id = job;
    compensation := CASE j.kind WHEN 'create_customer' THEN 'delete_customer' ELSE 'delete_connect_account' END;
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = j.profile_table;
    target_column := CASE j.kind WHEN 'create_customer' THEN a.customer_column ELSE a.connect_account_column END;
    IF target_column IS NOT NULL THEN
        EXECUTE format('SELECT true, %I::text FROM %s WHERE %I = $1::%s',
                target_column, a.profile_table, a.id_column, a.id_type)
           INTO found_profile, current_id USING j.user_id;
    END IF;
    IF current_id = object_id THEN
        PERFORM onboarding._finish_job(job, onboarding._succeeded(), 'skipped',
            jsonb_build_object('reason', 'profile already linked to this object', 'stripe_id', object_id),
            stripe_id => object_id);
        RETURN 'already_linked';
    ELSIF found_profile THEN
        -- Someone linked another object meanwhile: ours has no profile pointing at it.
        PERFORM onboarding._finish_job(job, onboarding._orphaned(), 'orphaned',
            jsonb_build_object('reason', format('profile is linked to %s instead', current_id), 'stripe_id', object_id),
            stripe_id => object_id, error => format('profile is already linked to %s; %s is unused', current_id, object_id));
        PERFORM onboarding._enqueue_for_customer(j.profile_table, j.user_id, compensation, object_id,
                                                 'profile linked to another object');
        RETURN 'linked_elsewhere';
    END IF;
    PERFORM onboarding._finish_job(job, onboarding._orphaned(), 'orphaned',
        jsonb_build_object('reason', 'profile deleted before write-back', 'stripe_id', object_id),
        stripe_id => object_id, error => format('profile deleted before %s could be written back', object_id));
    PERFORM onboarding._enqueue_for_customer(j.profile_table, j.user_id, compensation, object_id,
                                             'profile deleted before write-back');
    RETURN 'profile_gone';
END $$;

-- A Connect account job whose profile has no customer yet waits for the customer's job (without
-- spending an attempt); with no such job open, it is dead.
CREATE OR REPLACE FUNCTION onboarding._wait_for_customer(job bigint) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
BEGIN
    SELECT * INTO j FROM onboarding.jobs WHERE id = job;
    IF EXISTS (SELECT FROM onboarding.jobs c
                WHERE c.profile_table = j.profile_table AND c.user_id = j.user_id AND c.kind = 'create_customer'
                  AND onboarding._is_open(c.state)) THEN
        PERFORM onboarding._finish_job(job, onboarding._pending(), 'postponed',
            jsonb_build_object('reason', 'waiting for the customer'), retry_in => interval '1 second');
        UPDATE onboarding.jobs SET attempts = attempts - 1 WHERE id = job;
        RETURN 'postponed';
    END IF;
    PERFORM onboarding._finish_job(job, onboarding._dead(), 'dead',
        jsonb_build_object('reason', 'the profile has no customer and none is being created'),
        error => 'the profile has no customer and none is being created; enqueue_customer() first');
    RETURN 'dead';  -- what happened (an event step), not the state
END $$;

-- Finishes an email update; if the email changed again meanwhile, queues the next update.
CREATE OR REPLACE FUNCTION onboarding._finish_email_update(job bigint, sent_email text, detail jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
    a onboarding.attachments;
    current_email text;
BEGIN
    PERFORM onboarding._finish_job(job, onboarding._succeeded(), 'email_updated', detail);
    SELECT * INTO j FROM onboarding.jobs WHERE id = job;
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = j.profile_table;
    IF FOUND THEN
        EXECUTE format('SELECT %I::text FROM %s WHERE %I = $1::%s AND %I = $2',
                a.email_column, a.profile_table, a.id_column, a.id_type, a.customer_column)
           INTO current_email USING j.user_id, j.stripe_id;
        IF current_email IS NOT NULL AND btrim(current_email) IS DISTINCT FROM sent_email
           AND onboarding._sync_email_enabled() THEN
            PERFORM onboarding._enqueue_for_customer(j.profile_table, j.user_id, 'update_customer_email',
                                                     j.stripe_id, 'email changed during an update');
        END IF;
    END IF;
END $$;

-- Seconds until the next pending job is due (negative when overdue, NULL when there is none), so
-- an idle worker sleeps exactly that long. (Not greatest(0, …): greatest ignores NULL.)
CREATE OR REPLACE FUNCTION onboarding._next_due_in() RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT CASE WHEN EXISTS (SELECT FROM onboarding.intake) THEN 0
                        ELSE extract(epoch FROM min(run_at) - now())::double precision END
              FROM onboarding.jobs WHERE state = onboarding._pending());
END $$;

-- Puts back jobs claimed by a worker process that no longer exists (crash, kill, restart), or
-- running for longer than the lease (a worker alive but stuck; its late result is then refused by
-- _finish_job). Attempts were counted at claim time, so a job that keeps killing its worker runs
-- out of them and is parked.
CREATE OR REPLACE FUNCTION onboarding._requeue_abandoned(max_attempts integer, lease interval) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    requeued integer;
BEGIN
    WITH abandoned AS (
        UPDATE onboarding.jobs j
           SET state = CASE WHEN j.attempts >= max_attempts THEN onboarding._dead() ELSE onboarding._pending() END,
               run_at = now(), claimed_by = NULL,
               last_error = CASE WHEN j.attempts >= max_attempts
                            THEN 'the worker exited during every attempt' ELSE j.last_error END
         WHERE j.state = onboarding._running()
           AND (j.claimed_at < now() - lease
                OR NOT EXISTS (SELECT FROM pg_stat_activity s WHERE s.pid = j.claimed_by))
        RETURNING j.id, j.user_id, j.state, j.attempts)
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT id, user_id, CASE WHEN state = onboarding._dead() THEN 'dead' ELSE 'requeued' END,
           jsonb_build_object('reason', 'the worker that claimed it exited or overran its lease', 'attempts', attempts)
      FROM abandoned;
    GET DIAGNOSTICS requeued = ROW_COUNT;
    RETURN requeued;
END $$;

CREATE OR REPLACE FUNCTION onboarding.prune(older_than interval DEFAULT NULL, batch integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keep interval := coalesce(older_than, current_setting('onboarding.retention', true)::interval, '30 days');
    pruned bigint;
BEGIN
    IF keep <= interval '0' THEN
        RETURN 0;  -- retention 0: keep everything
    END IF;
    WITH doomed AS (
        SELECT id FROM onboarding.jobs
         WHERE onboarding._is_done(state) AND finished_at < now() - keep
         ORDER BY finished_at LIMIT batch FOR UPDATE SKIP LOCKED),
    gone_events AS (DELETE FROM onboarding.events e USING doomed d WHERE e.job_id = d.id)
    DELETE FROM onboarding.jobs j USING doomed d WHERE j.id = d.id;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END $$;

-- Jobs that need a human: dead ones, running ones past their lease, pending ones waiting long.
CREATE OR REPLACE FUNCTION onboarding.audit_jobs(waiting_longer_than interval DEFAULT '5 minutes')
RETURNS TABLE (job_id bigint, kind text, user_id text, problem text, state text, attempts integer,
               age interval, reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT j.id, j.kind, j.user_id,
           CASE WHEN j.state = onboarding._dead() THEN 'dead'
                WHEN j.state = onboarding._running() THEN 'stuck past its lease'
                ELSE 'waiting long' END,
           j.state, j.attempts, now() - j.created_at,
           coalesce(j.last_error, CASE WHEN j.state = onboarding._running() THEN format('claimed by pid %s at %s', j.claimed_by, j.claimed_at) END)
      FROM onboarding.jobs j
     WHERE j.state = onboarding._dead()
        OR (j.state = onboarding._running()
            AND j.claimed_at < now() - coalesce(current_setting('onboarding.lease', true), '5min')::interval)
        OR (j.state = onboarding._pending() AND j.created_at < now() - waiting_longer_than)
     ORDER BY j.id;
$$;

-- Attached profiles without a customer (or, where the Connect policy wants one, without an
-- account), with their latest job's state and error, "awaiting the worker" (an insert not yet
-- promoted to a job) or "no job". Profiles whose job is younger than older_than are still in
-- flight and left out.
CREATE OR REPLACE FUNCTION onboarding.audit_missing(older_than interval DEFAULT '5 minutes')
RETURNS TABLE (profile_table regclass, user_id text, missing text, job_id bigint, state text, last_error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments ORDER BY attachments.profile_table::text LOOP
        RETURN QUERY EXECUTE format($sql$
            SELECT %1$L::regclass, p.uid, m.what, j.id,
                   CASE WHEN q.since IS NOT NULL THEN 'awaiting the worker' ELSE coalesce(j.state, 'no job') END,
                   j.last_error
              FROM (SELECT t.%2$I::text AS uid, t.%3$I AS customer, %4$s AS account, %5$s AS wants_account
                      FROM %1$s t) p
             CROSS JOIN LATERAL (VALUES ('customer', 'create_customer', p.customer IS NULL),
                                        ('connect account', 'create_connect_account',
                                         p.account IS NULL AND p.wants_account)) m(what, kind, is_missing)
              LEFT JOIN LATERAL (SELECT x.id, x.state, x.last_error, x.created_at FROM onboarding.jobs x
                                  WHERE x.profile_table = %1$L::regclass AND x.user_id = p.uid AND x.kind = m.kind
                                  ORDER BY x.id DESC LIMIT 1) j ON true
              -- An insert not yet promoted to a job (see onboarding.intake).
              LEFT JOIN (SELECT i.user_id, min(i.enqueued_at) AS since FROM onboarding.intake i
                          WHERE i.profile_table = %1$L::regclass GROUP BY i.user_id) q
                     ON q.user_id = p.uid AND m.kind = 'create_customer'
             WHERE m.is_missing
               AND CASE WHEN q.since IS NOT NULL THEN q.since < now() - $1
                        ELSE j.id IS NULL OR NOT onboarding._is_open(j.state) OR j.created_at < now() - $1 END
             ORDER BY p.uid, m.what $sql$,
            a.profile_table, a.id_column, a.customer_column,
            coalesce(format('t.%I::text', a.connect_account_column), 'NULL::text'),
            CASE a.connect_policy WHEN 'always' THEN 'true'
                                  WHEN 'when' THEN format('onboarding._connect_due(%L::onboarding.attachments, t)', a)
                                  ELSE 'false' END)
        USING older_than;
    END LOOP;
END $$;

-- Operational metrics over a window: queue depth, age, throughput, latencies, attempts, failures.
CREATE OR REPLACE FUNCTION onboarding.stats_for(since interval DEFAULT '1 hour')
RETURNS TABLE (metric text, value numeric, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH recent AS (SELECT * FROM onboarding.jobs WHERE created_at >= now() - since),
    latency AS (
        SELECT extract(epoch FROM w.at - onboarding._queued_commit_time(q.detail, q.xmin)) * 1000 AS ms
          FROM onboarding.events w
          JOIN LATERAL (SELECT e.detail, e.xmin FROM onboarding.events e
                         WHERE e.job_id = w.job_id AND e.step = 'enqueued' ORDER BY e.id LIMIT 1) q ON true
         WHERE w.step = 'written_back' AND w.at >= now() - since
           AND current_setting('track_commit_timestamp')::boolean),
    calls AS (SELECT (detail->>'duration_ms')::numeric AS ms FROM onboarding.events
               WHERE step = 'stripe_response' AND at >= now() - since AND detail ? 'duration_ms'),
    failures AS (SELECT coalesce(detail->>'status', detail->>'transport', detail->>'kind') AS status,
                        coalesce(detail->>'code', '') AS code
                   FROM onboarding.events WHERE step IN ('failed', 'dead') AND at >= now() - since)
    SELECT 'jobs ' || s, count(j.id)::numeric, 'in the queue now'
      FROM unnest(ARRAY[onboarding._pending(), onboarding._running(), onboarding._dead()]) s
      LEFT JOIN onboarding.jobs j ON j.state = s GROUP BY s
    UNION ALL
    SELECT 'inserts awaiting the worker', count(*)::numeric, 'in onboarding.intake, not yet jobs'
      FROM onboarding.intake
    UNION ALL
    SELECT 'oldest pending (s)', coalesce(extract(epoch FROM now() - min(created_at)), 0)::numeric(12, 1), NULL
      FROM (SELECT created_at FROM onboarding.jobs WHERE state = onboarding._pending()
            UNION ALL SELECT enqueued_at FROM onboarding.intake) pending
    UNION ALL
    SELECT 'succeeded per minute', (count(*) / greatest(extract(epoch FROM since) / 60, 1))::numeric(12, 2),
           format('%s succeeded in %s', count(*), since)
      FROM onboarding.jobs WHERE state = onboarding._succeeded() AND finished_at >= now() - since
    UNION ALL
    SELECT 'commit to written back p' || p, percentile_cont(p / 100.0) WITHIN GROUP (ORDER BY ms)::numeric(12, 1), 'ms'
      FROM latency, unnest(ARRAY[50, 95, 99]) p GROUP BY p
    UNION ALL
    SELECT 'commit to written back max', max(ms)::numeric(12, 1), 'ms' FROM latency
    UNION ALL
    SELECT 'stripe call p' || p, percentile_cont(p / 100.0) WITHIN GROUP (ORDER BY ms)::numeric(12, 1), 'ms'
      FROM calls, unnest(ARRAY[50, 95, 99]) p GROUP BY p
    UNION ALL
    SELECT 'attempts per finished job', avg(attempts)::numeric(12, 2), NULL
      FROM recent WHERE NOT onboarding._is_open(state)
    UNION ALL
    SELECT 'failure rate', round(count(*) FILTER (WHERE step IN ('failed', 'dead') AND detail ? 'kind')::numeric
                                 / nullif(count(*) FILTER (WHERE step = 'stripe_request'), 0), 4),
           'failed Stripe attempts per request'
      FROM onboarding.events WHERE at >= now() - since
    UNION ALL
    SELECT 'failures ' || status || coalesce(' ' || nullif(code, ''), ''), count(*)::numeric, 'failed or dead attempts'
      FROM failures GROUP BY status, code;
$$;

-- Puts a dead or cancelled job back in the queue with a fresh attempt budget and the
-- same idempotency key (it is the same logical operation).
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
    IF j.state NOT IN (onboarding._dead(), onboarding._cancelled()) THEN
        RAISE EXCEPTION 'onboarding.retry: job % is %, only dead or cancelled jobs can be retried', job_id, j.state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN j.state = onboarding._pending() THEN 'It is already queued.'
                              WHEN j.state = onboarding._running() THEN 'It is being worked on right now.'
                              ELSE 'It has finished.' END;
    END IF;
    SELECT o.id INTO open_job FROM onboarding.jobs o
     WHERE o.profile_table = j.profile_table AND o.kind = j.kind AND o.user_id = j.user_id
       AND o.stripe_id IS NOT DISTINCT FROM j.stripe_id AND onboarding._is_open(o.state);
    IF FOUND THEN
        RAISE EXCEPTION 'onboarding.retry: job % for user % is already open for the same work', open_job, j.user_id
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Wait for that job instead.';
    END IF;
    UPDATE onboarding.jobs
       SET state = onboarding._pending(), attempts = 0, run_at = now()
     WHERE id = job_id RETURNING * INTO j;
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (j.id, j.user_id, 'retried', jsonb_build_object('by', session_user::text));
    PERFORM onboarding._wake_worker_after_commit();
    RETURN NEXT j;
END $$;

-- Retries every dead job, or only those whose Stripe error code (or transport kind) matches.
-- Jobs whose profile already has another open job are left alone.
CREATE OR REPLACE FUNCTION onboarding.retry_dead(error_code text DEFAULT NULL) RETURNS SETOF onboarding.jobs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    candidate bigint;
BEGIN
    FOR candidate IN
        SELECT d.id FROM onboarding.jobs d
         WHERE d.state = onboarding._dead()
           AND (error_code IS NULL
                OR d.last_error_detail->>'code' = error_code
                OR d.last_error_detail->>'transport' = error_code)
           AND NOT EXISTS (SELECT FROM onboarding.jobs o
                            WHERE o.profile_table = d.profile_table AND o.kind = d.kind AND o.user_id = d.user_id
                              AND o.stripe_id IS NOT DISTINCT FROM d.stripe_id AND onboarding._is_open(o.state))
         ORDER BY d.id
    LOOP
        RETURN QUERY SELECT * FROM onboarding.retry(candidate);
    END LOOP;
END $$;

-- Cancels a job that is waiting. A running job cannot be cancelled (its Stripe call is in flight).
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
    IF j.state <> onboarding._pending() THEN
        RAISE EXCEPTION 'onboarding.cancel: job % is %, only pending jobs can be cancelled', job_id, j.state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN j.state = onboarding._running() THEN 'Its Stripe call is in flight; let it finish.'
                              ELSE 'It is no longer waiting.' END;
    END IF;
    UPDATE onboarding.jobs SET state = onboarding._cancelled()
     WHERE id = job_id RETURNING * INTO j;
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (j.id, j.user_id, 'cancelled', jsonb_build_object('by', session_user::text));
    RETURN NEXT j;
END $$;

-- Enqueues a customer job for every profile without a customer and without an open or dead job,
-- `batch` at a time, committing after each batch (so the workers start at once and another
-- session can watch onboarding.backfill_progress); re-running adds nothing new. The Stripe calls
-- are paced where every call is made, in the workers. A procedure: CALL it outside a transaction.
CREATE OR REPLACE PROCEDURE onboarding.backfill(profile_table regclass DEFAULT NULL, batch integer DEFAULT 500)
LANGUAGE plpgsql AS $$
DECLARE
    a onboarding.attachments;
    run bigint;
    total bigint;
    added bigint;
    done bigint;
    last_id text;
    next_last text;
    started timestamptz;
BEGIN
    IF batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'onboarding.backfill: batch must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR a IN SELECT * FROM onboarding.attachments t
              WHERE backfill.profile_table IS NULL OR t.profile_table = backfill.profile_table
              ORDER BY t.profile_table::text LOOP
        EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NULL', a.profile_table, a.customer_column)
           INTO total;
        INSERT INTO onboarding.backfills (profile_table, total) VALUES (a.profile_table, total) RETURNING id INTO run;
        COMMIT;
        started := pg_catalog.clock_timestamp();
        done := 0;
        last_id := NULL;
        LOOP
            -- Keyset pagination in the id column's own order.
            EXECUTE pg_catalog.format($sql$
                WITH page AS (
                    SELECT t.%2$I AS id FROM %1$s t
                     WHERE t.%3$I IS NULL AND ($1::text IS NULL OR t.%2$I > $1::%4$s)
                     ORDER BY t.%2$I LIMIT $2),
                wanted AS (
                    SELECT p.id::text AS uid FROM page p
                     WHERE NOT EXISTS (SELECT FROM onboarding.jobs j
                                        WHERE j.profile_table = %1$L::regclass AND j.kind = 'create_customer'
                                          AND j.user_id = p.id::text AND (onboarding._is_open(j.state) OR j.state = onboarding._dead())))
                SELECT (SELECT p.id::text FROM page p ORDER BY p.id DESC LIMIT 1),  -- no max(uuid)
                       (SELECT count(onboarding._enqueue(%1$L::regclass, uid, 'create_customer', 'backfill ' || $3))
                          FROM wanted) $sql$,
                    a.profile_table, a.id_column, a.customer_column, a.id_type)
               INTO next_last, added USING last_id, batch, run;
            EXIT WHEN next_last IS NULL;
            last_id := next_last;
            done := done + added;
            UPDATE onboarding.backfills SET enqueued = done, updated_at = now() WHERE id = run;
            COMMIT;
            RAISE NOTICE 'onboarding.backfill %: % of % profiles of % enqueued, % provisioned, about % left',
                run, done, total, a.profile_table,
                (SELECT p.provisioned FROM onboarding.backfill_progress p WHERE p.id = run),
                coalesce((SELECT date_trunc('second', p.time_left)::text FROM onboarding.backfill_progress p
                           WHERE p.id = run), 'unknown');
        END LOOP;
        UPDATE onboarding.backfills SET enqueued = done, updated_at = now(), finished_at = now() WHERE id = run;
        COMMIT;
        RAISE NOTICE 'onboarding.backfill %: % jobs enqueued for % in %', run, done, a.profile_table,
            pg_catalog.clock_timestamp() - started;
    END LOOP;
END $$;

-- Progress of each backfill: jobs enqueued and provisioned so far, and the time left at the
-- current pace.
CREATE OR REPLACE VIEW onboarding.backfill_progress AS
SELECT b.id, b.profile_table, b.total, b.enqueued, p.provisioned, p.failed,
       CASE WHEN b.enqueued = 0 THEN 100 ELSE round(100.0 * p.provisioned / b.enqueued, 1) END AS percent,
       CASE WHEN p.provisioned > 0 AND p.provisioned < b.enqueued
            THEN (now() - b.started_at) / p.provisioned * (b.enqueued - p.provisioned) END AS time_left,
       b.started_at, b.finished_at AS enqueued_at
  FROM onboarding.backfills b
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE j.state = onboarding._succeeded()) AS provisioned,
              count(*) FILTER (WHERE j.state IN (onboarding._dead(), onboarding._skipped(), onboarding._cancelled())) AS failed
         FROM onboarding.events e JOIN onboarding.jobs j ON j.id = e.job_id
        WHERE e.step = 'enqueued' AND e.detail->>'source' = 'backfill ' || b.id) p;

-- What it takes to make Stripe and the profiles agree, and (dry_run => false) doing it: queue
-- missing customers, retry dead jobs, relink a profile whose customer is gone to the live orphan
-- of the same user (else clear it and queue a new one), delete orphans, sync differing emails.
-- Every action done is an event ('reconciled', or the jobs it queues).
CREATE OR REPLACE FUNCTION onboarding.reconcile(dry_run boolean DEFAULT true, profile_table regclass DEFAULT NULL)
RETURNS TABLE (action text, user_id text, stripe_id text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding.refresh_stripe_snapshot();
    r record;
    a onboarding.attachments;
    relinked text[] := '{}';
    target_column name;
BEGIN
    -- Profiles pointing at nothing usable in Stripe.
    FOR r IN SELECT * FROM onboarding.audit_mismatches(false) m
              WHERE reconcile.profile_table IS NULL OR m.profile_table = reconcile.profile_table LOOP
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = r.profile_table;
        target_column := CASE r.object WHEN 'customer' THEN a.customer_column ELSE a.connect_account_column END;
        user_id := r.user_id;
        IF r.problem LIKE 'email differs%' THEN
            action := 'sync email'; stripe_id := r.stripe_id; detail := r.problem;
            IF NOT dry_run THEN
                PERFORM onboarding._enqueue_for_customer(r.profile_table, r.user_id, 'update_customer_email', r.stripe_id, 'reconcile');
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT o.id INTO stripe_id FROM onboarding.stripe_objects o
         WHERE o.snapshot = snap AND o.user_id = r.user_id AND o.object = r.object
         ORDER BY o.id LIMIT 1;
        IF stripe_id IS NOT NULL AND r.problem = 'missing or deleted in Stripe' THEN
            action := 'relink'; detail := format('%s is %s; the user''s live %s is %s', r.stripe_id, r.problem, r.object, stripe_id);
            relinked := relinked || stripe_id;
            IF NOT dry_run THEN
                EXECUTE format('UPDATE %s SET %I = $2 WHERE %I = $1::%s', r.profile_table, target_column, a.id_column, a.id_type)
                  USING r.user_id, stripe_id;
                PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('from', r.stripe_id, 'to', stripe_id));
            END IF;
        ELSE
            action := 'recreate'; stripe_id := r.stripe_id; detail := r.problem;
            IF NOT dry_run THEN
                EXECUTE format('UPDATE %s SET %I = NULL WHERE %I = $1::%s', r.profile_table, target_column, a.id_column, a.id_type)
                  USING r.user_id;
                PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('cleared', r.stripe_id, 'problem', r.problem));
                PERFORM onboarding._enqueue(r.profile_table, r.user_id,
                    CASE r.object WHEN 'customer' THEN 'create_customer' ELSE 'create_connect_account' END, 'reconcile');
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    -- Stripe objects no profile uses.
    FOR r IN SELECT * FROM onboarding.audit_orphans(false) o WHERE NOT o.stripe_id = ANY (relinked) LOOP
        action := 'delete orphan'; user_id := r.user_id; stripe_id := r.stripe_id; detail := r.problem;
        IF NOT dry_run THEN
            PERFORM onboarding._enqueue_for_customer(
                coalesce(reconcile.profile_table, (SELECT t.profile_table FROM onboarding.attachments t ORDER BY 1 LIMIT 1)),
                r.user_id, CASE r.object WHEN 'customer' THEN 'delete_customer' ELSE 'delete_connect_account' END,
                r.stripe_id, 'reconcile');
            PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('stripe_id', r.stripe_id));
        END IF;
        RETURN NEXT;
    END LOOP;
    -- Profiles without their objects.
    FOR r IN SELECT * FROM onboarding.audit_missing('0 seconds') m
              WHERE reconcile.profile_table IS NULL OR m.profile_table = reconcile.profile_table LOOP
        user_id := r.user_id; stripe_id := NULL;
        IF r.state = onboarding._dead() THEN
            action := 'retry'; detail := format('job %s: %s', r.job_id, r.last_error);
            IF NOT dry_run THEN
                PERFORM onboarding.retry(r.job_id);
            END IF;
        ELSIF r.state = 'no job' OR onboarding._is_final(r.state) THEN  -- (dead ones: above)
            action := 'enqueue ' || r.missing; detail := format('latest job: %s', r.state);
            IF NOT dry_run THEN
                PERFORM onboarding._enqueue(r.profile_table, r.user_id,
                    CASE r.missing WHEN 'customer' THEN 'create_customer' ELSE 'create_connect_account' END, 'reconcile');
            END IF;
        ELSE
            CONTINUE;  -- in flight
        END IF;
        IF NOT dry_run THEN
            PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('detail', detail));
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;

------------------------------------------------------------------------------------------------
-- 4. Privileges of the new functions (sql/privileges.sql: nothing for PUBLIC).
------------------------------------------------------------------------------------------------
REVOKE EXECUTE ON FUNCTION onboarding._pending(), onboarding._running(), onboarding._succeeded(),
    onboarding._skipped(), onboarding._orphaned(), onboarding._dead(), onboarding._cancelled(),
    onboarding._is_open(text), onboarding._is_final(text), onboarding._is_done(text),
    onboarding._job_may_become(text, text), onboarding._job_state_machine() FROM PUBLIC;
-- 0.1.0 left the insert trigger's function open to PUBLIC, so that any role could put the trigger
-- on a table of its own and write into the intake. EXECUTE on a trigger function is checked only at
-- CREATE TRIGGER (attach()), so applications' inserts are not affected.
REVOKE EXECUTE ON FUNCTION onboarding._intake_profile() FROM PUBLIC;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
