-- onboarding: audits and metrics for DBAs. Read-only; SECURITY DEFINER so that an auditor role
-- needs EXECUTE on these functions only (see README, "Roles and grants").

-- The ordered event log of one user, one readable line per step (the ordering guide's "good
-- sequence"), starting with the commit of the profile when track_commit_timestamp is on.
CREATE FUNCTION onboarding.sequence(user_id text)
RETURNS TABLE (at timestamptz, job_id bigint, step text, line text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH steps AS (
        SELECT e.at, e.id, e.job_id, e.step, e.detail, j.kind, e.xmin AS event_xmin
          FROM onboarding.events e JOIN onboarding.jobs j ON j.id = e.job_id
         WHERE e.user_id = sequence.user_id)
    SELECT committed, NULL::bigint, 'committed', format('Profile committed: %s', sequence.user_id)
      FROM (SELECT onboarding._queued_commit_time(s.detail, s.event_xmin) AS committed FROM steps s
             WHERE s.step = 'enqueued' ORDER BY s.id LIMIT 1) c
     WHERE committed IS NOT NULL
    UNION ALL
    -- An insert the worker has not promoted to a job yet (it is not running, or is paused).
    SELECT i.enqueued_at, NULL::bigint, 'enqueued', format('Queued create customer for %s (insert, awaiting the worker)', i.user_id)
      FROM onboarding.intake i WHERE i.user_id = sequence.user_id
    UNION ALL
    SELECT s.at, s.job_id, s.step,
           CASE s.step
               WHEN 'enqueued' THEN format('Queued %s for %s (%s)', replace(s.kind, '_', ' '), sequence.user_id,
                                           coalesce(s.detail->>'source', 'insert'))
               WHEN 'claimed' THEN format('Worker %s took job %s (attempt %s)', s.detail->>'worker_pid', s.job_id,
                                          s.detail->>'attempt')
               WHEN 'stripe_request' THEN format('Calling Stripe: %s %s', s.detail->>'method', s.detail->>'path')
               WHEN 'stripe_response' THEN format('Stripe answered %s%s (request %s)', s.detail->>'status',
                                                  coalesce(': ' || (s.detail->>'stripe_id'), ''),
                                                  coalesce(s.detail->>'request_id', 'none'))
               WHEN 'written_back' THEN format('Stripe ID %s written to %s.%s', s.detail->>'stripe_id',
                                               s.detail->>'table', s.detail->>'column')
               WHEN 'failed' THEN format('Attempt failed: %s; retry in %s ms', coalesce(s.detail->>'message',
                                         s.detail->>'transport', s.detail->>'kind'), s.detail->>'retry_in_ms')
               WHEN 'dead' THEN format('Gave up: %s', coalesce(s.detail->>'reason', s.detail->>'message'))
               ELSE initcap(replace(s.step, '_', ' ')) || coalesce(': ' || coalesce(s.detail->>'reason',
                                                                                  s.detail->>'stripe_id'), '')
           END
      FROM steps s
     ORDER BY 1, 2 NULLS FIRST;
$$;

-- Jobs that need a human: dead ones, running ones past their lease, pending ones waiting long.
CREATE FUNCTION onboarding.audit_jobs(waiting_longer_than interval DEFAULT '5 minutes')
RETURNS TABLE (job_id bigint, kind text, user_id text, problem text, state text, attempts integer,
               age interval, reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT j.id, j.kind, j.user_id,
           CASE WHEN j.state = 'dead' THEN 'dead'
                WHEN j.state = 'running' THEN 'stuck past its lease'
                ELSE 'waiting long' END,
           j.state, j.attempts, now() - j.created_at,
           coalesce(j.last_error, CASE j.state WHEN 'running' THEN format('claimed by pid %s at %s', j.claimed_by, j.claimed_at) END)
      FROM onboarding.jobs j
     WHERE j.state = 'dead'
        OR (j.state = 'running'
            AND j.claimed_at < now() - coalesce(current_setting('onboarding.lease', true), '5min')::interval)
        OR (j.state = 'pending' AND j.created_at < now() - waiting_longer_than)
     ORDER BY j.id;
$$;

-- Attached profiles without a customer (or, where the Connect policy wants one, without an
-- account), with their latest job's state and error, "awaiting the worker" (an insert not yet
-- promoted to a job) or "no job". Profiles whose job is younger than older_than are still in
-- flight and left out.
CREATE FUNCTION onboarding.audit_missing(older_than interval DEFAULT '5 minutes')
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
                        ELSE j.id IS NULL OR j.state NOT IN ('pending', 'running') OR j.created_at < now() - $1 END
             ORDER BY p.uid, m.what $sql$,
            a.profile_table, a.id_column, a.customer_column,
            coalesce(format('t.%I::text', a.connect_account_column), 'NULL::text'),
            CASE a.connect_policy WHEN 'always' THEN 'true'
                                  WHEN 'when' THEN format('onboarding._connect_due(%L::onboarding.attachments, t)', a)
                                  ELSE 'false' END)
        USING older_than;
    END LOOP;
END $$;

-- Proof that no Stripe request for a profile was sent before the profile's transaction committed:
-- the commit time of the transaction that queued the job (_queued_commit_time) against the first
-- 'stripe_request' event. Returns the violations, then one summary row
-- (violation = false) with the number of jobs checked.
CREATE FUNCTION onboarding.audit_ordering()
RETURNS TABLE (violation boolean, job_id bigint, user_id text, committed_at timestamptz,
               first_request_at timestamptz, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked bigint := 0;
    unknown bigint := 0;
    r record;
BEGIN
    IF NOT current_setting('track_commit_timestamp')::boolean THEN
        RAISE EXCEPTION 'onboarding.audit_ordering needs track_commit_timestamp = on'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SYSTEM SET track_commit_timestamp = on; then restart PostgreSQL. Only transactions '
                         'committed after that can be checked.';
    END IF;
    FOR r IN
        SELECT q.job_id, q.user_id, onboarding._queued_commit_time(q.detail, q.xmin) AS committed, s.first_request
          FROM (SELECT DISTINCT ON (e.job_id) e.job_id, e.user_id, e.detail, e.xmin
                  FROM onboarding.events e WHERE e.step = 'enqueued' ORDER BY e.job_id, e.id) q
          JOIN LATERAL (SELECT min(e.at) AS first_request FROM onboarding.events e
                         WHERE e.job_id = q.job_id AND e.step = 'stripe_request') s ON s.first_request IS NOT NULL
    LOOP
        IF r.committed IS NULL THEN
            unknown := unknown + 1;  -- committed before track_commit_timestamp, or its timestamp expired
            CONTINUE;
        END IF;
        checked := checked + 1;
        IF r.first_request < r.committed THEN
            violation := true; job_id := r.job_id; user_id := r.user_id; committed_at := r.committed;
            first_request_at := r.first_request;
            detail := format('Stripe was called %s before the commit', r.committed - r.first_request);
            RETURN NEXT;
        END IF;
    END LOOP;
    violation := false; job_id := NULL; user_id := NULL; committed_at := NULL; first_request_at := NULL;
    detail := format('%s jobs checked, %s without a known commit time', checked, unknown);
    RETURN NEXT;
END $$;

-- Operational metrics over a window: queue depth, age, throughput, latencies, attempts, failures.
CREATE FUNCTION onboarding.stats_for(since interval DEFAULT '1 hour')
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
      FROM unnest(ARRAY['pending', 'running', 'dead']) s
      LEFT JOIN onboarding.jobs j ON j.state = s GROUP BY s
    UNION ALL
    SELECT 'inserts awaiting the worker', count(*)::numeric, 'in onboarding.intake, not yet jobs'
      FROM onboarding.intake
    UNION ALL
    SELECT 'oldest pending (s)', coalesce(extract(epoch FROM now() - min(created_at)), 0)::numeric(12, 1), NULL
      FROM (SELECT created_at FROM onboarding.jobs WHERE state = 'pending'
            UNION ALL SELECT enqueued_at FROM onboarding.intake) pending
    UNION ALL
    SELECT 'succeeded per minute', (count(*) / greatest(extract(epoch FROM since) / 60, 1))::numeric(12, 2),
           format('%s succeeded in %s', count(*), since)
      FROM onboarding.jobs WHERE state = 'succeeded' AND finished_at >= now() - since
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
      FROM recent WHERE state NOT IN ('pending', 'running')
    UNION ALL
    SELECT 'failure rate', round(count(*) FILTER (WHERE step IN ('failed', 'dead') AND detail ? 'kind')::numeric
                                 / nullif(count(*) FILTER (WHERE step = 'stripe_request'), 0), 4),
           'failed Stripe attempts per request'
      FROM onboarding.events WHERE at >= now() - since
    UNION ALL
    SELECT 'failures ' || status || coalesce(' ' || nullif(code, ''), ''), count(*)::numeric, 'failed or dead attempts'
      FROM failures GROUP BY status, code;
$$;

CREATE VIEW onboarding.stats AS SELECT * FROM onboarding.stats_for('1 hour');

REVOKE EXECUTE ON FUNCTION onboarding.sequence, onboarding.audit_jobs, onboarding.audit_missing,
    onboarding.audit_ordering, onboarding.stats_for FROM PUBLIC;
REVOKE ALL ON onboarding.stats FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Backfill: profiles that existed before attach (or lost their job) get one, in batches.
------------------------------------------------------------------------------------------------

CREATE TABLE onboarding.backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_table regclass NOT NULL,
    total bigint NOT NULL,
    enqueued bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
REVOKE ALL ON onboarding.backfills FROM PUBLIC;

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
                                          AND j.user_id = p.id::text AND j.state IN ('pending', 'running', 'dead')))
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
REVOKE EXECUTE ON PROCEDURE onboarding.backfill FROM PUBLIC;

-- Progress of each backfill: jobs enqueued and provisioned so far, and the time left at the
-- current pace.
CREATE VIEW onboarding.backfill_progress AS
SELECT b.id, b.profile_table, b.total, b.enqueued, p.provisioned, p.failed,
       CASE WHEN b.enqueued = 0 THEN 100 ELSE round(100.0 * p.provisioned / b.enqueued, 1) END AS percent,
       CASE WHEN p.provisioned > 0 AND p.provisioned < b.enqueued
            THEN (now() - b.started_at) / p.provisioned * (b.enqueued - p.provisioned) END AS time_left,
       b.started_at, b.finished_at AS enqueued_at
  FROM onboarding.backfills b
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE j.state = 'succeeded') AS provisioned,
              count(*) FILTER (WHERE j.state IN ('dead', 'skipped', 'cancelled')) AS failed
         FROM onboarding.events e JOIN onboarding.jobs j ON j.id = e.job_id
        WHERE e.step = 'enqueued' AND e.detail->>'source' = 'backfill ' || b.id) p;
REVOKE ALL ON onboarding.backfill_progress FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Retention: finished jobs (succeeded, skipped, cancelled) and their events are deleted after
-- onboarding.retention; dead and orphaned ones are kept until a human deals with them.
------------------------------------------------------------------------------------------------

CREATE FUNCTION onboarding.prune(older_than interval DEFAULT NULL, batch integer DEFAULT 1000) RETURNS bigint
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
         WHERE state IN ('succeeded', 'skipped', 'cancelled') AND finished_at < now() - keep
         ORDER BY finished_at LIMIT batch FOR UPDATE SKIP LOCKED),
    gone_events AS (DELETE FROM onboarding.events e USING doomed d WHERE e.job_id = d.id)
    DELETE FROM onboarding.jobs j USING doomed d WHERE j.id = d.id;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END $$;
REVOKE EXECUTE ON FUNCTION onboarding.prune FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- What Stripe holds: a snapshot of every customer and Connect account (taken by a worker, which
-- alone has the key), for the audits that compare Stripe with the profiles.
------------------------------------------------------------------------------------------------

CREATE TABLE onboarding.stripe_snapshots (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    pages integer NOT NULL DEFAULT 0,
    customers integer NOT NULL DEFAULT 0,
    accounts integer NOT NULL DEFAULT 0
);
CREATE TABLE onboarding.stripe_objects (
    snapshot bigint NOT NULL REFERENCES onboarding.stripe_snapshots (id) ON DELETE CASCADE,
    id text NOT NULL,
    object text NOT NULL CHECK (object IN ('customer', 'account')),
    user_id text,
    email text,
    PRIMARY KEY (snapshot, id)
);
CREATE INDEX stripe_objects_by_user ON onboarding.stripe_objects (snapshot, user_id);
REVOKE ALL ON onboarding.stripe_snapshots, onboarding.stripe_objects FROM PUBLIC;

CREATE FUNCTION onboarding._snapshot_begin() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM onboarding.stripe_snapshots;  -- one snapshot at a time: the latest
    INSERT INTO onboarding.stripe_snapshots DEFAULT VALUES RETURNING id;
$$;

CREATE FUNCTION onboarding._snapshot_add(snapshot bigint, kind text, page jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.stripe_objects (snapshot, id, object, user_id, email)
    SELECT snapshot, o->>'id', kind, o->>'user_id', o->>'email' FROM jsonb_array_elements(page) o
    ON CONFLICT DO NOTHING;
    UPDATE onboarding.stripe_snapshots
       SET pages = pages + 1,
           customers = customers + CASE kind WHEN 'customer' THEN jsonb_array_length(page) ELSE 0 END,
           accounts = accounts + CASE kind WHEN 'account' THEN jsonb_array_length(page) ELSE 0 END
     WHERE id = snapshot;
$$;

CREATE FUNCTION onboarding._snapshot_finish(snapshot bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE onboarding.stripe_snapshots SET finished_at = now() WHERE id = snapshot;
$$;

-- Has a worker page through Stripe's customers and accounts (NOTICEs report progress); returns
-- the snapshot id. Waits up to wait_ms.
CREATE FUNCTION onboarding.refresh_stripe_snapshot(wait_ms integer DEFAULT 600000) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT onboarding._request_snapshot(wait_ms);
$$;

-- The latest finished snapshot, taking a fresh one first if asked.
CREATE FUNCTION onboarding._snapshot(refresh boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    latest bigint;
BEGIN
    IF refresh THEN
        RETURN onboarding.refresh_stripe_snapshot();
    END IF;
    SELECT id INTO latest FROM onboarding.stripe_snapshots WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1;
    IF latest IS NULL THEN
        RAISE EXCEPTION 'onboarding: no snapshot of Stripe yet' USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Call it with refresh => true, or SELECT onboarding.refresh_stripe_snapshot().';
    END IF;
    RETURN latest;
END $$;

-- Every attached profile with its Stripe IDs.
CREATE FUNCTION onboarding._all_profiles()
RETURNS TABLE (profile_table regclass, user_id text, customer text, account text, email text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments LOOP
        RETURN QUERY EXECUTE format('SELECT %1$L::regclass, t.%2$I::text, t.%3$I::text, %4$s, t.%5$I::text FROM %1$s t',
            a.profile_table, a.id_column, a.customer_column,
            coalesce(format('t.%I::text', a.connect_account_column), 'NULL::text'), a.email_column);
    END LOOP;
END $$;

-- Stripe customers and Connect accounts carrying a metadata.user_id that no profile has, or whose
-- profile links another object. (Objects without metadata.user_id were not made by this extension.)
CREATE FUNCTION onboarding.audit_orphans(refresh boolean DEFAULT true)
RETURNS TABLE (object text, stripe_id text, user_id text, problem text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding._snapshot(refresh);
BEGIN
    RETURN QUERY
        SELECT o.object, o.id, o.user_id,
               CASE WHEN count(p.user_id) = 0 THEN 'no profile has this user_id'
                    ELSE format('the profile links %s', coalesce(min(CASE o.object WHEN 'customer' THEN p.customer
                                                                                 ELSE p.account END), 'nothing')) END
          FROM onboarding.stripe_objects o
          LEFT JOIN onboarding._all_profiles() p ON p.user_id = o.user_id
         WHERE o.snapshot = snap AND o.user_id IS NOT NULL
         GROUP BY o.object, o.id, o.user_id
        HAVING NOT bool_or(coalesce(CASE o.object WHEN 'customer' THEN p.customer ELSE p.account END = o.id, false))
         ORDER BY o.user_id, o.id;
END $$;

-- Profiles whose stored Stripe ID is missing or deleted in Stripe, belongs to another user, or
-- whose email differs from the customer's.
CREATE FUNCTION onboarding.audit_mismatches(refresh boolean DEFAULT true)
RETURNS TABLE (profile_table regclass, user_id text, object text, stripe_id text, problem text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding._snapshot(refresh);
BEGIN
    RETURN QUERY
        SELECT p.profile_table, p.user_id, k.object, k.stripe_id,
               CASE WHEN o.id IS NULL THEN 'missing or deleted in Stripe'
                    WHEN o.user_id IS DISTINCT FROM p.user_id THEN format('belongs to user %s in Stripe', o.user_id)
                    ELSE format('email differs: Stripe has %s', coalesce(o.email, 'none')) END
          FROM onboarding._all_profiles() p
         CROSS JOIN LATERAL (VALUES ('customer', p.customer), ('account', p.account)) k(object, stripe_id)
          LEFT JOIN onboarding.stripe_objects o ON o.snapshot = snap AND o.id = k.stripe_id
         WHERE k.stripe_id IS NOT NULL
           AND (o.id IS NULL OR o.user_id IS DISTINCT FROM p.user_id
                OR (k.object = 'customer' AND btrim(o.email) IS DISTINCT FROM btrim(p.email)))
         ORDER BY p.profile_table::text, p.user_id, k.object;
END $$;

CREATE FUNCTION onboarding._reconciled(uid text, action text, detail jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (NULL, uid, 'reconciled', jsonb_build_object('action', action, 'by', session_user::text) || detail);
$$;

-- What it takes to make Stripe and the profiles agree, and (dry_run => false) doing it: queue
-- missing customers, retry dead jobs, relink a profile whose customer is gone to the live orphan
-- of the same user (else clear it and queue a new one), delete orphans, sync differing emails.
-- Every action done is an event ('reconciled', or the jobs it queues).
CREATE FUNCTION onboarding.reconcile(dry_run boolean DEFAULT true, profile_table regclass DEFAULT NULL)
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
        IF r.state = 'dead' THEN
            action := 'retry'; detail := format('job %s: %s', r.job_id, r.last_error);
            IF NOT dry_run THEN
                PERFORM onboarding.retry(r.job_id);
            END IF;
        ELSIF r.state = 'no job' OR r.state IN ('skipped', 'cancelled', 'orphaned', 'succeeded') THEN
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

REVOKE EXECUTE ON FUNCTION onboarding._snapshot_begin, onboarding._snapshot_add, onboarding._snapshot_finish,
    onboarding.refresh_stripe_snapshot, onboarding._snapshot, onboarding._all_profiles, onboarding.audit_orphans,
    onboarding.audit_mismatches, onboarding._reconciled, onboarding.reconcile FROM PUBLIC;
