-- onboarding: operating the queue, for DBAs: retry, retry_dead and cancel of single jobs, backfill
-- of profiles that have no job, and reconcile (Stripe against the profiles, from the audits of
-- sql/audits.sql over the snapshot of sql/maintenance.sql).

------------------------------------------------------------------------------------------------
-- Operating the queue (DBAs): retry and cancel. Each returns the rows it changed.
------------------------------------------------------------------------------------------------

-- Puts a dead or cancelled job back in the queue with a fresh attempt budget and the
-- same idempotency key (it is the same logical operation).
CREATE FUNCTION onboarding.retry(job_id bigint) RETURNS SETOF onboarding.jobs
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
CREATE FUNCTION onboarding.retry_dead(error_code text DEFAULT NULL) RETURNS SETOF onboarding.jobs
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
CREATE FUNCTION onboarding.cancel(job_id bigint) RETURNS SETOF onboarding.jobs
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

------------------------------------------------------------------------------------------------
-- Backfill: profiles that existed before attach (or lost their job) get one, in batches.
------------------------------------------------------------------------------------------------

-- Enqueues a customer job for every profile without a customer and without an open or dead job,
-- `batch` at a time, committing after each batch (so the workers start at once and another
-- session can watch onboarding.backfill_progress); re-running adds nothing new. The Stripe calls
-- are paced where every call is made, in the workers. A procedure: CALL it outside a transaction.
CREATE PROCEDURE onboarding.backfill(profile_table regclass DEFAULT NULL, batch integer DEFAULT 500)
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
    table_name text;
    provisioned bigint;
    time_left text;
BEGIN
    IF batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'onboarding.backfill: batch must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF backfill.profile_table IS NOT NULL AND NOT EXISTS (SELECT FROM pg_class WHERE oid = backfill.profile_table) THEN
        RAISE EXCEPTION 'onboarding.backfill: no table has oid %', backfill.profile_table::oid
            USING ERRCODE = 'undefined_table', HINT = 'Pass an attached table by name, or no table to backfill them all.';
    ELSIF backfill.profile_table IS NOT NULL
          AND NOT EXISTS (SELECT FROM onboarding.attachments t WHERE t.profile_table = backfill.profile_table) THEN
        RAISE EXCEPTION 'onboarding.backfill: % is not attached', backfill.profile_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'attach() it first (its existing profiles are then what backfill() provisions); SELECT * FROM onboarding.attachments lists the attached tables.';
    ELSIF NOT EXISTS (SELECT FROM onboarding.attachments) THEN
        RAISE NOTICE 'onboarding.backfill: no table is attached, so there is nothing to backfill'
            USING HINT = 'attach() a table first.';
    END IF;
    FOR a IN SELECT * FROM onboarding.attachments t
              WHERE backfill.profile_table IS NULL OR t.profile_table = backfill.profile_table
              ORDER BY t.profile_table::text LOOP
        -- The table is read as its owner (src/tables.rs), whose search_path is pinned: the name is
        -- spelled in full (a procedure that commits cannot pin ours, so regclass may print it short).
        SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO table_name
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = a.profile_table;
        SELECT r[1]::bigint INTO total
          FROM onboarding._as_owner(a.profile_table, pg_catalog.format('SELECT count(*)::text FROM %s WHERE %I IS NULL',
                   table_name, a.customer_column)) r;
        INSERT INTO onboarding.backfills (profile_table, total) VALUES (a.profile_table, total) RETURNING id INTO run;
        COMMIT;
        started := pg_catalog.clock_timestamp();
        done := 0;
        last_id := NULL;
        LOOP
            -- Keyset pagination in the id column's own order (the page keeps it: ordinality).
            WITH page AS (
                SELECT x.r[1] AS uid, x.n
                  FROM onboarding._as_owner(a.profile_table, pg_catalog.format(
                           'SELECT t.%2$I::text FROM %1$s t WHERE t.%3$I IS NULL AND ($1::text IS NULL OR t.%2$I > $1::%4$s)
                             ORDER BY t.%2$I LIMIT $2::integer',
                           table_name, a.id_column, a.customer_column, a.id_type),
                           ARRAY[last_id, batch::text]) WITH ORDINALITY AS x(r, n)),
            wanted AS (
                SELECT p.uid FROM page p
                 WHERE NOT EXISTS (SELECT FROM onboarding.jobs j
                                    WHERE j.profile_table = a.profile_table AND j.kind = 'create_customer'
                                      AND j.user_id = p.uid COLLATE "default"  -- see _enqueue
                                      AND (onboarding._is_open(j.state) OR j.state = onboarding._dead())))
            SELECT (SELECT p.uid FROM page p ORDER BY p.n DESC LIMIT 1),
                   (SELECT count(onboarding._enqueue(a.profile_table, w.uid, 'create_customer', 'backfill ' || run))
                      FROM wanted w)
              INTO next_last, added;
            EXIT WHEN next_last IS NULL;
            last_id := next_last;
            done := done + added;
            UPDATE onboarding.backfills SET enqueued = done, updated_at = now() WHERE id = run;
            COMMIT;
            SELECT p.provisioned, date_trunc('second', p.time_left)::text INTO provisioned, time_left
              FROM onboarding.backfill_progress p WHERE p.id = run;
            RAISE NOTICE 'onboarding.backfill %: % of % profiles of % enqueued, % provisioned, about % left',
                run, done, total, a.profile_table, provisioned, coalesce(time_left, 'unknown');
        END LOOP;
        UPDATE onboarding.backfills SET enqueued = done, updated_at = now(), finished_at = now() WHERE id = run;
        COMMIT;
        RAISE NOTICE 'onboarding.backfill %: % jobs enqueued for % in %', run, done, a.profile_table,
            pg_catalog.clock_timestamp() - started;
    END LOOP;
END $$;

-- Progress of each backfill: jobs enqueued and provisioned so far, and the time left at the
-- current pace; and where its jobs wait: their lane (3, backfill and reconcile), how many of them
-- are pending, and how many pending jobs of the lanes claimed before it (signups, retries, email
-- syncs) go first, beyond its share (onboarding.lane_shares).
CREATE VIEW onboarding.backfill_progress AS
SELECT b.id, b.profile_table, b.total, b.enqueued, p.provisioned, p.failed,
       CASE WHEN b.enqueued = 0 THEN 100 ELSE round(100.0 * p.provisioned / b.enqueued, 1) END AS percent,
       CASE WHEN p.provisioned > 0 AND p.provisioned < b.enqueued
            THEN (now() - b.started_at) / p.provisioned * (b.enqueued - p.provisioned) END AS time_left,
       b.started_at, b.finished_at AS enqueued_at,
       onboarding._lane('create_customer', 'backfill') AS lane, p.pending,
       (SELECT count(*) FROM onboarding.jobs j
         WHERE j.state = onboarding._pending() AND j.lane < onboarding._lane('create_customer', 'backfill')) AS pending_ahead
  FROM onboarding.backfills b
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE j.state = onboarding._succeeded()) AS provisioned,
              count(*) FILTER (WHERE j.state IN (onboarding._dead(), onboarding._skipped(), onboarding._cancelled())) AS failed,
              count(*) FILTER (WHERE j.state = onboarding._pending()) AS pending
         FROM onboarding.events e JOIN onboarding.jobs j ON j.id = e.job_id
        WHERE e.step = 'enqueued' AND e.detail->>'source' = 'backfill ' || b.id) p;

------------------------------------------------------------------------------------------------
-- Reconcile: make Stripe and the profiles agree, from a fresh snapshot of Stripe and the audits.
------------------------------------------------------------------------------------------------

CREATE FUNCTION onboarding._reconciled(uid text, action text, detail jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (NULL, uid, 'reconciled', jsonb_build_object('action', action, 'by', session_user::text) || detail);
$$;

-- What it takes to make Stripe and the profiles agree, and (dry_run => false) doing it: queue
-- missing customers, retry dead jobs, relink a profile whose customer is gone to the live orphan
-- of the same user (else clear it and queue a new one), delete orphans, sync differing emails.
-- Every action done is an event ('reconciled', or the jobs it queues). A profile naming an object
-- this extension did not make for it is reported ('untied'), never acted on (sql/ties.sql): which
-- profile the object belongs to is for a person to decide.
CREATE FUNCTION onboarding.reconcile(dry_run boolean DEFAULT true, profile_table regclass DEFAULT NULL)
RETURNS TABLE (action text, user_id text, stripe_id text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding.refresh_stripe_snapshot();
    r record;
    a onboarding.attachments;
    relinked text[] := '{}';
    target_column name;
    tie onboarding.stripe_ties;
BEGIN
    -- Profiles pointing at nothing usable in Stripe.
    FOR r IN SELECT * FROM onboarding.audit_mismatches(false) m
              WHERE reconcile.profile_table IS NULL OR m.profile_table = reconcile.profile_table LOOP
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = r.profile_table;
        -- (An accounts_v2 profile's Account, object account_v2, is in its customer column.)
        target_column := CASE r.object WHEN 'account' THEN a.connect_account_column ELSE a.customer_column END;
        user_id := r.user_id;
        IF r.problem LIKE 'not made for this profile%' THEN
            action := 'untied'; stripe_id := r.stripe_id; detail := r.problem || '; nothing done';
            RETURN NEXT;
            CONTINUE;
        ELSIF r.problem LIKE 'email differs%' THEN
            action := 'sync email'; stripe_id := r.stripe_id; detail := r.problem;
            IF NOT dry_run THEN
                PERFORM onboarding._enqueue_for_customer(r.profile_table, r.user_id, 'update_customer_email', r.stripe_id, 'reconcile');
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- The user's live object, unless this extension made it for another profile.
        SELECT o.id INTO stripe_id FROM onboarding.stripe_objects o
         WHERE o.snapshot = snap AND o.user_id = r.user_id AND o.object = r.object
           AND NOT EXISTS (SELECT FROM onboarding.stripe_ties t WHERE t.stripe_id = o.id
                              AND (t.profile_table, t.user_id) IS DISTINCT FROM (r.profile_table, r.user_id))
         ORDER BY o.id LIMIT 1;
        IF stripe_id IS NOT NULL AND r.problem = 'missing or deleted in Stripe' THEN
            action := 'relink'; detail := format('%s is %s; the user''s live %s is %s', r.stripe_id, r.problem, r.object, stripe_id);
            relinked := relinked || stripe_id;
            IF NOT dry_run THEN
                PERFORM onboarding._tie(stripe_id, CASE r.object WHEN 'account' THEN 'account' ELSE 'customer' END,
                                        r.profile_table, r.user_id);
                PERFORM FROM onboarding._as_owner(r.profile_table, format('UPDATE %s SET %I = $2 WHERE %I = $1::%s',
                            r.profile_table, target_column, a.id_column, a.id_type), ARRAY[r.user_id, stripe_id]);
                PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('from', r.stripe_id, 'to', stripe_id));
            END IF;
        ELSE
            action := 'recreate'; stripe_id := r.stripe_id; detail := r.problem;
            IF NOT dry_run THEN
                PERFORM FROM onboarding._as_owner(r.profile_table, format('UPDATE %s SET %I = NULL WHERE %I = $1::%s',
                            r.profile_table, target_column, a.id_column, a.id_type), ARRAY[r.user_id]);
                PERFORM onboarding._reconciled(r.user_id, action, jsonb_build_object('cleared', r.stripe_id, 'problem', r.problem));
                PERFORM onboarding._enqueue(r.profile_table, r.user_id,
                    CASE r.object WHEN 'account' THEN 'create_connect_account' ELSE 'create_customer' END, 'reconcile');
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    -- Stripe objects no profile uses.
    -- (A 'not checked' line names no object: it is for a person to read, not an orphan.)
    FOR r IN SELECT * FROM onboarding.audit_orphans(false) o
              WHERE o.stripe_id IS NOT NULL AND o.stripe_id <> ALL (relinked) LOOP
        action := 'delete orphan'; user_id := r.user_id; stripe_id := r.stripe_id; detail := r.problem;
        -- Made for another user than its metadata says: not an orphan of this user's to delete.
        SELECT * INTO tie FROM onboarding.stripe_ties t WHERE t.stripe_id = r.stripe_id;
        CONTINUE WHEN FOUND AND tie.user_id IS DISTINCT FROM r.user_id;
        IF NOT dry_run THEN
            IF tie.stripe_id IS NULL THEN
                -- Made before ties were recorded: the operator's reconcile is what ties it.
                -- (Of the object's model: a v2 Account is closed through an accounts_v2 table's job.)
                tie.profile_table := coalesce(reconcile.profile_table,
                                              (SELECT t.profile_table FROM onboarding.attachments t
                                                WHERE (t.stripe_objects = 'accounts_v2') = (r.object = 'account_v2')
                                                ORDER BY 1 LIMIT 1));
                PERFORM onboarding._tie(r.stripe_id, CASE r.object WHEN 'account' THEN 'account' ELSE 'customer' END,
                                        tie.profile_table, r.user_id);
            END IF;
            PERFORM onboarding._enqueue_for_customer(tie.profile_table,
                r.user_id, CASE r.object WHEN 'account' THEN 'delete_connect_account' ELSE 'delete_customer' END,
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
