-- onboarding: the job transitions the background worker drives: promoting the insert trigger's
-- intake to jobs, claiming, the calls' requests and results, write-back, and finishing jobs. Every
-- change of a job's state goes through the state machine trigger of sql/job_states.sql.

------------------------------------------------------------------------------------------------
-- Job transitions used by the background worker (src/worker.rs). Not for applications.
------------------------------------------------------------------------------------------------

-- Moves up to max_rows committed intake rows into jobs, set-based: one create_customer job per
-- profile (joining an open one if any), created at the insert's time, and its 'enqueued' event
-- carrying the insert's commit time (the event's own xmin is the worker's transaction; see
-- _queued_commit_time). Concurrent workers skip each other's rows. Returns the rows taken.
-- The jobs are due from now(), the claiming transaction's start, not the insert's: with their new
-- ids they sort after every key a claim has passed (core/src/claim_cursor.rs).
-- The job's idempotency key comes from the intake row itself (_intake_key): a standby promoted
-- after this server called Stripe promotes the replicated row again under the same key.
-- A transaction still open that enqueued a job for one of these profiles (enqueue_customer in an
-- application's transaction) holds that profile's place in jobs_one_open_per_target until it ends,
-- and inserting its job here would wait for it: never on behalf of every other profile. So all
-- rows at once without waiting; if one would have waited, row by row, each such row left in the
-- intake for a later claim. (The lock_timeout set here ends with the function: its SET clause.)
CREATE FUNCTION onboarding._promote_intake(max_rows integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken_count bigint := 0;
    intake_row tid;
BEGIN
    PERFORM set_config('lock_timeout', '1ms', true);
    BEGIN
        RETURN onboarding._promote_intake_rows(max_rows, NULL);
    EXCEPTION WHEN lock_not_available THEN
        FOR intake_row IN SELECT x.ctid FROM onboarding.intake x LIMIT max_rows LOOP
            BEGIN
                taken_count := taken_count + onboarding._promote_intake_rows(1, intake_row);
            EXCEPTION WHEN lock_not_available THEN
                NULL; -- its profile's other job is still being enqueued: a later claim takes it
            END;
        END LOOP;
    END;
    RETURN taken_count;
END $$;

-- _promote_intake's work: up to max_rows intake rows (only the row at `only_row`, when given) that
-- no other worker is taking.
CREATE FUNCTION onboarding._promote_intake_rows(max_rows integer, only_row tid) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken_count bigint;
BEGIN
    WITH taken AS (
        DELETE FROM onboarding.intake i
         WHERE i.ctid = ANY (ARRAY(SELECT x.ctid FROM onboarding.intake x
                                    WHERE only_row IS NULL OR x.ctid = only_row
                                    LIMIT max_rows FOR UPDATE SKIP LOCKED))
        RETURNING i.profile_table, i.user_id, i.enqueued_at,
                  onboarding._intake_key(i.profile_table, i.user_id, i.xmin, i.enqueued_at) AS idempotency_key,
                  CASE WHEN current_setting('track_commit_timestamp')::boolean
                       THEN pg_xact_commit_timestamp(i.xmin) END AS committed_at),
    profiles AS (
        SELECT DISTINCT ON (t.profile_table, t.user_id) t.*
          FROM taken t ORDER BY t.profile_table, t.user_id, t.enqueued_at),
    new_jobs AS (
        INSERT INTO onboarding.jobs (kind, profile_table, user_id, idempotency_key, run_at, created_at, updated_at)
        SELECT 'create_customer', p.profile_table, p.user_id, p.idempotency_key, now(), p.enqueued_at,
               p.enqueued_at
          FROM profiles p ORDER BY p.enqueued_at
        ON CONFLICT DO NOTHING
        RETURNING id, profile_table, user_id),
    logged AS (
        INSERT INTO onboarding.events (job_id, user_id, step, at, detail)
        SELECT n.id, n.user_id, 'enqueued', p.enqueued_at,
               jsonb_build_object('source', 'insert', 'committed_at', p.committed_at)
          FROM new_jobs n JOIN profiles p USING (profile_table, user_id)
         ORDER BY n.id)
    SELECT count(*) INTO taken_count FROM taken;
    RETURN taken_count;
END $$;

-- The idempotency key of an inserted profile's customer: a digest of what the inserting
-- transaction wrote (table, user id, its transaction id and start time), fixed and replicated with
-- the profile, unique without storing anything more on the application's path. The digest keeps
-- the user id out of Stripe's logs (keys must carry no personal data).
CREATE FUNCTION onboarding._intake_key(tbl regclass, uid text, inserted_by xid, enqueued_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN 'onboarding-' || pg_catalog.md5(pg_catalog.concat_ws('/', tbl::oid, uid, inserted_by,
                                                            pg_catalog.date_part('epoch', enqueued_at)))::uuid;

-- Claims up to max_jobs due jobs (committed by the caller before any Stripe call) and reads each
-- one's profile: first up to reserved[lane] from each lane (the lower lanes' shares,
-- core/src/lane_shares.rs), then lane by lane in order. A job whose table is gone, detached or
-- unreadable is finished here, not returned. In each lane the scan starts after the key
-- (after_run_at, after_id) the worker passes (NULL: from the front), past the dead index entries of
-- earlier claims that a held snapshot keeps (core/src/claim_cursor.rs); run_at comes back to move
-- that key on.
-- look_up_first: Stripe may have pruned the idempotency key (first attempt older than `horizon`)
-- or refused it (idempotency_error), or an old primary attempted the job (jobs.look_up_first):
-- look the object up before creating anything.
CREATE FUNCTION onboarding._claim_jobs(max_jobs integer, horizon interval, after_run_at timestamptz[],
                                       after_id bigint[], reserved integer[])
RETURNS TABLE (job_id bigint, kind text, user_id text, idempotency_key text, attempts integer,
               stripe_id text, request_params jsonb, look_up_first boolean,
               profile_found boolean, email text, customer_id text, connect_account_id text, lane smallint,
               run_at timestamptz, finished boolean, stripe_objects text, account_options jsonb, display_name text,
               first_attempt_age double precision)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job onboarding.jobs;
    a onboarding.attachments;
    due boolean;
    claimed bigint[] := '{}';
    wanted integer;
BEGIN
    FOR pass IN 1 .. 2 LOOP
        FOR l IN 0 .. 3 LOOP
            wanted := max_jobs - cardinality(claimed);
            IF pass = 1 THEN
                wanted := least(wanted, coalesce(reserved[l + 1], 0));
            END IF;
            CONTINUE WHEN wanted <= 0;
            claimed := claimed || ARRAY(
                SELECT j.id FROM onboarding.jobs j
                 WHERE j.state = onboarding._pending() AND j.lane = l AND j.run_at <= now()
                   AND (j.run_at, j.id) > (coalesce(after_run_at[l + 1], '-infinity'), coalesce(after_id[l + 1], 0))
                   AND j.id <> ALL (claimed)  -- our own locks do not skip them
                 ORDER BY j.run_at, j.id
                 LIMIT wanted
                 FOR UPDATE SKIP LOCKED);
        END LOOP;
    END LOOP;
    FOR job IN
        WITH taken AS (
            UPDATE onboarding.jobs j
               SET state = onboarding._running(), attempts = j.attempts + 1, claimed_by = pg_backend_pid(),
                   claimer_started_at = onboarding._backend_started_at(), claimed_at = now(),
                   first_attempt_at = coalesce(j.first_attempt_at, now())
             WHERE j.id = ANY (claimed)
            RETURNING j.*)
        SELECT * FROM taken t ORDER BY t.lane, t.run_at, t.id
    LOOP
        -- Every claimed job comes back, where the next claim starts; those finished here say so.
        job_id := job.id; lane := job.lane; run_at := job.run_at; finished := true;
        <<planning>>
        BEGIN
            INSERT INTO onboarding.events (job_id, user_id, step, detail)
            VALUES (job.id, job.user_id, 'claimed', jsonb_build_object('attempt', job.attempts, 'worker_pid', pg_backend_pid()));
            SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = job.profile_table;
            IF NOT FOUND THEN
                PERFORM onboarding._finish_job(job.id, onboarding._skipped(), 'skipped',
                    jsonb_build_object('reason', format('table %s is no longer attached', job.profile_table)));
                EXIT planning;
            END IF;
            kind := job.kind; user_id := job.user_id;
            -- A creation job's stripe_id is the object it holds for a postponed write-back, if any.
            idempotency_key := job.idempotency_key; attempts := job.attempts;
            stripe_id := coalesce(job.stripe_id, job.object_to_link);
            request_params := job.request_params;
            stripe_objects := a.stripe_objects; account_options := a.account_options;
            first_attempt_age := extract(epoch FROM now() - job.first_attempt_at);
            -- An accounts_v2 job looks up only when its key may be gone or was refused: after a
            -- promotion (jobs.look_up_first alone) the same key and body get the same Account, and
            -- the v2 list, eventually consistent, could not tell a recent Account absent anyway.
            -- Nor for a 409 (`idempotency_key_in_use`: the first request still runs, and the same key
            -- gets its answer), only for a key bound to another body (400).
            look_up_first := (job.look_up_first AND a.stripe_objects = 'v1') OR job.first_attempt_at < now() - horizon
                             OR (job.last_error_detail->>'type' = 'idempotency_error'
                                 AND (a.stripe_objects = 'v1' OR job.last_error_detail->>'status' = '400'));
            BEGIN
                -- As the table's owner (src/tables.rs), like every statement on an application table.
                SELECT r[1], r[2], r[3], r[4] INTO email, customer_id, connect_account_id, display_name
                  FROM onboarding._as_owner(a.profile_table,
                           format('SELECT %I::text, %I::text, %s, %s FROM %s WHERE %I = $1::%s',
                                  a.email_column, a.customer_column,
                                  coalesce(quote_ident(a.connect_account_column) || '::text', 'NULL::text'),
                                  coalesce(quote_ident(a.display_name_column) || '::text', 'NULL::text'),
                                  a.profile_table, a.id_column, a.id_type),
                           ARRAY[job.user_id]) r;
                profile_found := FOUND;
            EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
                -- A user id that cannot be an id of this table (say, an orphan's metadata): no profile.
                profile_found := false; email := NULL; customer_id := NULL; connect_account_id := NULL;
                display_name := NULL;
            WHEN lock_not_available THEN
                -- Another transaction holds the table (ALTER TABLE, VACUUM FULL, LOCK): the worker
                -- does not wait for it (src/tables.rs); this job tries again in a second.
                PERFORM onboarding._postpone(job.id, format('table %s is locked by another transaction', a.profile_table));
                EXIT planning;
            WHEN OTHERS OR query_canceled THEN
                -- query_canceled (which OTHERS leaves out): the read ran past onboarding.owner_statement_timeout
                -- (or the worker's statement was cancelled); it parks this job, not the whole claim.
                PERFORM onboarding._finish_job(job.id, onboarding._dead(), 'dead',
                    jsonb_build_object('reason', 'could not read the profile: ' || SQLERRM, 'sqlstate', SQLSTATE),
                    error => 'could not read the profile: ' || SQLERRM
                             || CASE SQLSTATE WHEN '57014' THEN ' (onboarding.owner_statement_timeout)' ELSE '' END);
                EXIT planning;
            END;
            -- A conditional account job: the condition is checked now, in the worker (bounded by
            -- onboarding.connect_condition_timeout), never in the application's UPDATE.
            IF job.conditional AND profile_found THEN
                BEGIN
                    due := onboarding._connect_due(a, job.user_id);
                EXCEPTION WHEN OTHERS OR query_canceled THEN
                    PERFORM onboarding._finish_job(job.id, onboarding._dead(), 'dead',
                        jsonb_build_object('reason', 'the Connect condition failed: ' || SQLERRM, 'sqlstate', SQLSTATE),
                        error => 'the Connect condition failed: ' || SQLERRM
                                 || CASE SQLSTATE WHEN '57014' THEN ' (onboarding.connect_condition_timeout)' ELSE '' END);
                    EXIT planning;
                END;
                IF NOT due THEN
                    PERFORM onboarding._finish_job(job.id, onboarding._skipped(), 'skipped',
                        jsonb_build_object('reason', format('the Connect policy of %s does not want an account for this profile',
                                                            a.profile_table)));
                    EXIT planning;
                END IF;
            END IF;
            -- Work on an existing object (an email sync, a deletion) only for the profile this
            -- extension made it for (sql/ties.sql): whatever queued it, a column is not enough.
            IF job.kind IN ('update_customer_email', 'delete_customer', 'delete_connect_account')
               AND NOT onboarding._tied(job.stripe_id, job.profile_table, job.user_id) THEN
                PERFORM onboarding._refuse_untied(job.profile_table, job.user_id, job.stripe_id,
                                                  replace(job.kind, '_', ' '), job.id);
                PERFORM onboarding._finish_job(job.id, onboarding._skipped(), 'skipped',
                    jsonb_build_object('reason', format('Stripe object %s was not made for this profile by this extension',
                                                        left(job.stripe_id, 60))));
                EXIT planning;
            END IF;
            finished := false;
        END;
        RETURN NEXT;
    END LOOP;
END $$;

-- The worker's claim in one statement: committed inserts turned into jobs (_promote_intake, up to
-- promote_at_most), then due jobs claimed (_claim_jobs). Every row carries how many inserts were
-- promoted; when nothing was claimed, one row with no job carries it.
CREATE FUNCTION onboarding._promote_and_claim(promote_at_most integer, max_jobs integer, horizon interval,
                                               after_run_at timestamptz[], after_id bigint[], reserved integer[])
RETURNS TABLE (promoted bigint, job_id bigint, kind text, user_id text, idempotency_key text, attempts integer,
               stripe_id text, request_params jsonb, look_up_first boolean,
               profile_found boolean, email text, customer_id text, connect_account_id text, lane smallint,
               run_at timestamptz, finished boolean, stripe_objects text, account_options jsonb, display_name text,
               first_attempt_age double precision)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken bigint := onboarding._promote_intake(promote_at_most);
BEGIN
    RETURN QUERY SELECT taken, c.* FROM onboarding._claim_jobs(max_jobs, horizon, after_run_at, after_id, reserved) c;
    IF NOT FOUND THEN
        promoted := taken;
        RETURN NEXT;
    END IF;
END $$;

-- Records an event and moves a running job to `new_state`. `retry_in` schedules a pending retry.
CREATE FUNCTION onboarding._finish_job(job bigint, new_state text, step text, detail jsonb,
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
           -- A failed attempt's retry gives way to new signups and requests.
           lane = CASE WHEN new_state = onboarding._pending() AND _finish_job.step = 'failed'
                       THEN greatest(j.lane, 1) ELSE j.lane END,
           claimed_by = NULL
     WHERE j.id = job AND j.state = onboarding._running() AND j.claimed_by = pg_backend_pid()
    RETURNING j.user_id INTO uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: job % is not running in this worker (taken back after its lease?)', job
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO onboarding.events (job_id, user_id, step, detail) VALUES (job, uid, step, detail);
END $$;

-- Puts a running job back, without spending an attempt, because of something it must not wait
-- for (a lock another transaction holds); `object` is the Stripe object it made, kept for the
-- write-back (jobs.object_to_link). It looks again in a second, then less often the longer it has
-- waited (a tenth of its age, at most a minute): a lock held for hours costs a claim a minute.
CREATE FUNCTION onboarding._postpone(job bigint, reason text, object text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    waited interval := now() - (SELECT coalesce(j.first_attempt_at, j.created_at) FROM onboarding.jobs j WHERE j.id = job);
BEGIN
    UPDATE onboarding.jobs SET object_to_link = coalesce(object, object_to_link) WHERE id = job;
    PERFORM onboarding._finish_job(job, onboarding._pending(), 'postponed',
        jsonb_build_object('reason', reason, 'stripe_id', object),
        retry_in => least(greatest(interval '1 second', waited / 10), interval '1 minute'));
    UPDATE onboarding.jobs SET attempts = attempts - 1 WHERE id = job;
END $$;

-- Records an event of a job (the worker's results other than the batched common ones).
-- (The worker's hot-path functions are plpgsql, not sql: plpgsql keeps its plans for the session,
-- while a non-inlined sql function is parsed and planned again on every call.)
CREATE FUNCTION onboarding._log_event(job bigint, step text, detail jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT j.id, j.user_id, _log_event.step, _log_event.detail FROM onboarding.jobs j WHERE j.id = job;
END $$;

-- Writes created (or adopted) customers and Connect accounts back to their profiles, set-based:
-- for each of this worker's running creation jobs, the object goes to the profile's column where it
-- is still NULL, the job is finished (written_back), and a customer whose profile email changed
-- after it was sent gets an email update. Returns the jobs written back; _write_back handles the
-- others (profile gone or linked elsewhere).
CREATE FUNCTION onboarding._link_objects(job_ids bigint[], objects text[]) RETURNS bigint[]
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
        -- The profiles are written as the table's owner (src/tables.rs); the jobs and events here.
        BEGIN
            WITH mine AS (
                SELECT x.id, x.user_id, o.object, x.request_params->>'email' AS sent_email
                  FROM unnest(job_ids, objects) AS o(id, object)
                  -- By primary key (OFFSET 0 keeps the other conditions out of the scan): the
                  -- open-jobs index fits them too, but holds every dead entry a snapshot keeps.
                  CROSS JOIN LATERAL (SELECT * FROM onboarding.jobs y WHERE y.id = o.id OFFSET 0) x
                 WHERE x.profile_table = target.profile_table AND x.kind = target.kind
                   AND x.state = onboarding._running() AND x.claimed_by = pg_backend_pid()),
            profiles_linked AS (
                SELECT r[1] AS user_id, r[2] AS email
                  FROM onboarding._as_owner(a.profile_table,
                           -- SKIP LOCKED: a row another transaction holds is left for a later claim
                           -- (_write_back postpones its job); it never holds up the batch. The rows
                           -- are locked first, once (MATERIALIZED), then updated by key: as an IN
                           -- (subquery) the planner ran the lock once per row (batch squared), and
                           -- with `IS NULL` rare in a provisioned table it may scan the whole table.
                           format('WITH locked AS MATERIALIZED (
                                       SELECT q.%2$I AS id, o.user_id, o.object
                                         FROM unnest($1::text[], $2::text[]) AS o(user_id, object)
                                         JOIN %1$s q ON q.%2$I = o.user_id::%4$s
                                        WHERE q.%2$I = ANY ($1::%4$s[])
                                          FOR UPDATE OF q SKIP LOCKED)
                                   UPDATE %1$s p SET %3$I = l.object FROM locked l
                                    WHERE p.%2$I = l.id AND p.%3$I IS NULL
                                    RETURNING l.user_id, p.%5$I::text',
                                  a.profile_table, a.id_column, target_column, a.id_type, a.email_column),
                           ARRAY[(SELECT array_agg(m.user_id) FROM mine m)::text,
                                 (SELECT array_agg(m.object) FROM mine m)::text]) r),
            linked AS (SELECT m.*, p.email FROM mine m JOIN profiles_linked p USING (user_id)),
            finished AS (
                UPDATE onboarding.jobs x
                   SET state = onboarding._succeeded(), stripe_id = l.object, claimed_by = NULL, object_to_link = NULL
                  FROM linked l WHERE x.id = l.id
                RETURNING x.id),
            logged AS (
                INSERT INTO onboarding.events (job_id, user_id, step, detail)
                SELECT l.id, l.user_id, 'written_back',
                       jsonb_build_object('stripe_id', l.object, 'table', a.profile_table::text, 'column', target_column)
                  FROM linked l ORDER BY l.id)
            SELECT coalesce(array_agg(l.id), '{}'),
                   coalesce(array_agg(l.id) FILTER (WHERE btrim(l.email) IS DISTINCT FROM l.sent_email), '{}')
              INTO linked, changed
              FROM linked l;
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;  -- another transaction holds the table: _write_back postpones these jobs
        END;
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
-- and finishes the job. Returns what happened: written_back, already_linked, postponed (the row
-- is locked: the job waits, holding its object), linked_elsewhere, profile_gone. An object no
-- profile can use is queued for deletion.
CREATE FUNCTION onboarding._write_back(job bigint, object_id text) RETURNS text
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
        BEGIN
            SELECT true, r[1] INTO found_profile, current_id
              FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s',
                       target_column, a.profile_table, a.id_column, a.id_type), ARRAY[j.user_id]) r;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM onboarding._postpone(job, format('table %s is locked by another transaction', a.profile_table),
                                         object_id);
            RETURN 'postponed';
        END;
    END IF;
    IF current_id = object_id THEN
        PERFORM onboarding._finish_job(job, onboarding._succeeded(), 'skipped',
            jsonb_build_object('reason', 'profile already linked to this object', 'stripe_id', object_id),
            stripe_id => object_id);
        RETURN 'already_linked';
    ELSIF found_profile AND current_id IS NULL THEN
        -- Another transaction holds the profile's row: keep the object, write it back at a later
        -- claim (no Stripe call, no attempt spent), and let the rest of the batch go on.
        PERFORM onboarding._postpone(job, 'the profile''s row is locked by another transaction', object_id);
        RETURN 'postponed';
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

-- The common outcome of a batch: customers created for running create_customer jobs. Logs every
-- stripe_response and writes the customers back (_link_objects); returns the jobs written back,
-- the caller sends the others through _write_back.
CREATE FUNCTION onboarding._record_created(job_ids bigint[], objects text[], responses jsonb[]) RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT x.id, x.user_id, 'stripe_response', r.detail
      FROM unnest(job_ids, responses) WITH ORDINALITY AS r(id, detail, n)
      JOIN onboarding.jobs x ON x.id = r.id
     ORDER BY r.n;
    RETURN onboarding._link_objects(job_ids, objects);
END $$;

-- What the calls of a claimed batch are about to send, set-based: each first attempt's parameters
-- (params NULL for retries, which resend the stored ones) and a stripe_request event per call.
CREATE FUNCTION onboarding._calls_starting(job_ids bigint[], params jsonb[], details jsonb[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.jobs x SET request_params = p.params
      FROM unnest(job_ids, params) AS p(id, params)
     WHERE x.id = p.id AND p.params IS NOT NULL AND x.request_params IS NULL;
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT x.id, x.user_id, 'stripe_request', d.detail
      FROM unnest(job_ids, details) WITH ORDINALITY AS d(id, detail, n)
      JOIN onboarding.jobs x ON x.id = d.id
     ORDER BY d.n;
END $$;

-- Moves each call's stripe_request event, logged at its claim (before the rate budget's wait), to
-- when its request was sent (seconds since the epoch); the claim's time stays in the detail as
-- queued_at. A call whose outcome is never recorded keeps the claim's time, which is earlier.
CREATE FUNCTION onboarding._requests_sent(job_ids bigint[], attempts integer[], sent_at double precision[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The event of that attempt: a late call (its lease overrun) must not move its successor's.
    UPDATE onboarding.events e
       SET at = to_timestamp(s.sent_at), detail = e.detail || jsonb_build_object('queued_at', e.at)
      FROM unnest(job_ids, attempts, sent_at) AS s(job_id, attempt, sent_at)
     CROSS JOIN LATERAL (SELECT max(r.id) AS id FROM onboarding.events r
                          WHERE r.job_id = s.job_id AND r.step = 'stripe_request'
                            AND r.detail->>'attempt' = s.attempt::text) this_attempt
     WHERE e.id = this_attempt.id;
END $$;

-- The worker's record in one statement: when each request went out (_requests_sent), then the
-- customers created as asked (_record_created, whose answer it returns).
CREATE FUNCTION onboarding._record_sent_and_created(sent_jobs bigint[], sent_attempts integer[],
                                                    sent_at double precision[], job_ids bigint[], objects text[],
                                                    responses jsonb[])
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cardinality(sent_jobs) > 0 THEN
        PERFORM onboarding._requests_sent(sent_jobs, sent_attempts, sent_at);
    END IF;
    IF cardinality(job_ids) > 0 THEN
        RETURN onboarding._record_created(job_ids, objects, responses);
    END IF;
    RETURN '{}';
END $$;

-- A Connect account job whose profile has no customer yet waits for the customer's job (without
-- spending an attempt); with no such job open, it is dead.
CREATE FUNCTION onboarding._wait_for_customer(job bigint) RETURNS text
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
CREATE FUNCTION onboarding._finish_email_update(job bigint, sent_email text, detail jsonb) RETURNS void
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
        SELECT r[1] INTO current_email
          FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s AND %I = $2',
                   a.email_column, a.profile_table, a.id_column, a.id_type, a.customer_column),
                   ARRAY[j.user_id, j.stripe_id]) r;
        IF current_email IS NOT NULL AND btrim(current_email) IS DISTINCT FROM sent_email
           AND onboarding._sync_email_enabled() THEN
            PERFORM onboarding._enqueue_for_customer(j.profile_table, j.user_id, 'update_customer_email',
                                                     j.stripe_id, 'email changed during an update');
        END IF;
    END IF;
END $$;

-- Seconds until the next pending job is due (negative when overdue, NULL when there is none), so
-- an idle worker sleeps exactly that long; each lane looked at after the worker's key in it, as
-- _claim_jobs does. (The intake is the worker's to watch: commits wake it.)
CREATE FUNCTION onboarding._next_due_in(after_run_at timestamptz[], after_id bigint[]) RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN extract(epoch FROM
        (SELECT min((SELECT j.run_at FROM onboarding.jobs j
                      WHERE j.state = onboarding._pending() AND j.lane = l
                        AND (j.run_at, j.id) > (coalesce(after_run_at[l + 1], '-infinity'), coalesce(after_id[l + 1], 0))
                      ORDER BY j.run_at, j.id LIMIT 1))
           FROM generate_series(0, 3) l) - now())::double precision;
END $$;
