-- onboarding: audits and metrics for DBAs. Read-only; SECURITY DEFINER so that an auditor role
-- needs EXECUTE on these functions only (see README, "Roles and grants"). The audits that compare
-- Stripe with the profiles read the latest snapshot of Stripe (sql/maintenance.sql).

-- When the transaction that queued a job committed, from the job's 'enqueued' event: promoted
-- inserts carry it in their detail; every other enqueuer wrote the event in its own transaction.
-- NULL when unknown (track_commit_timestamp off at the time, or the timestamp expired).
-- Inlined into the audits (no SET clause; every name is qualified).
CREATE FUNCTION onboarding._queued_commit_time(detail jsonb, event_xmin xid) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN detail OPERATOR(pg_catalog.?) 'committed_at'
                THEN pg_catalog.timestamptz(detail OPERATOR(pg_catalog.->>) 'committed_at')
                WHEN pg_catalog.bool(pg_catalog.current_setting('track_commit_timestamp'))
                THEN pg_catalog.pg_xact_commit_timestamp(event_xmin) END;
$$;

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
    UNION ALL
    -- What Stripe said of the user's Connect account and customer, from its events (sql/inbound.sql).
    SELECT e.at, NULL::bigint, e.step,
           CASE e.step
               WHEN 'stripe_account_updated' THEN
                   format('Stripe says account %s is %s%s', e.detail->>'account_id',
                          CASE WHEN (e.detail->>'ready')::boolean THEN 'ready' ELSE 'not ready' END,
                          coalesce(' (' || nullif(concat_ws(', ',
                              CASE WHEN (e.detail->>'deauthorized')::boolean THEN 'disconnected from the platform' END,
                              'disabled: ' || (e.detail->>'disabled_reason'),
                              'due: ' || nullif(array_to_string(ARRAY(SELECT jsonb_array_elements_text(
                                            e.detail->'requirements_currently_due')), ', '), '')), '') || ')', ''))
               WHEN 'stripe_customer_deleted' THEN
                   format('Stripe says customer %s was deleted: %s', e.detail->>'customer_id',
                          CASE e.detail->>'outcome' WHEN 'recreated' THEN 'cleared, a new one queued'
                                                    WHEN 'flagged' THEN 'flagged (audit_mismatches)'
                                                    ELSE e.detail->>'outcome' END)
               ELSE format('Stripe says customer %s''s email changed: %s', e.detail->>'customer_id', e.detail->>'outcome')
           END
      FROM onboarding.events e
     WHERE e.user_id = sequence.user_id AND e.job_id IS NULL
       AND e.step IN ('stripe_account_updated', 'stripe_customer_deleted', 'stripe_customer_updated')
     ORDER BY 1, 2 NULLS FIRST;
$$;

-- Jobs that need a human: dead ones, running ones past their lease, pending ones waiting long.
CREATE FUNCTION onboarding.audit_jobs(waiting_longer_than interval DEFAULT '5 minutes')
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
              FROM (SELECT r[1] AS uid, r[2] AS customer, r[3] AS account, r[4]::boolean AS wants_account
                      FROM onboarding._as_owner(%1$L::regclass, %2$L) r) p  -- read as the table's owner
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
            a.profile_table,
            format(E'SELECT p.%I::text, p.%I::text, %s, %s FROM %s AS p', a.id_column, a.customer_column,
                   coalesce('p.' || quote_ident(a.connect_account_column) || '::text', 'NULL::text'),
                   CASE a.connect_policy WHEN 'always' THEN '''true'''
                                         WHEN 'when' THEN format(E'(%s\n)::boolean::text', a.connect_condition)
                                         ELSE '''false''' END,
                   a.profile_table))
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
                   FROM onboarding.events WHERE step IN ('failed', 'dead') AND at >= now() - since),
    -- What each of this database's workers can do with its Stripe key (shared memory, read once).
    keys AS (SELECT unnest(onboarding._worker_key_states()) AS k)
    SELECT 'jobs ' || s, count(j.id)::numeric, 'in the queue now'
      FROM unnest(ARRAY[onboarding._pending(), onboarding._running(), onboarding._dead()]) s
      LEFT JOIN onboarding.jobs j ON j.state = s GROUP BY s
    UNION ALL
    -- This database's workers, and what they can do with the Stripe key: without a usable one they
    -- claim nothing, and jobs wait with only the server log saying why.
    SELECT 'workers running', count(*)::numeric, 'keys: ' || coalesce(string_agg(DISTINCT k, ', '), 'none')
      FROM keys
    UNION ALL
    SELECT 'workers without a usable Stripe key', count(*) FILTER (WHERE k IN ('missing', 'refused'))::numeric,
           'no key, or Stripe refused it: the server log says which'
      FROM keys
    UNION ALL
    SELECT 'workers whose key may not do Connect',
           count(*) FILTER (WHERE k IN ('connect refused', 'connect and accounts_v2 refused'))::numeric,
           'Connect jobs wait; customers go on'
      FROM keys
    UNION ALL
    SELECT 'workers whose key may not call /v2',
           count(*) FILTER (WHERE k IN ('accounts_v2 refused', 'connect and accounts_v2 refused'))::numeric,
           'accounts_v2 tables'' jobs wait; v1 tables'' go on'
      FROM keys
    UNION ALL
    -- Pending work by priority lane (jobs.lane, claimed lowest first).
    SELECT 'pending in lane ' || l.lane, count(j.id)::numeric, l.what
      FROM (VALUES (0, 'signups and application requests'), (1, 'retries'), (2, 'email syncs and compensation'),
                   (3, 'backfill and reconcile')) l(lane, what)
      LEFT JOIN onboarding.jobs j ON j.lane = l.lane AND j.state = onboarding._pending()
     GROUP BY l.lane, l.what
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
      FROM failures GROUP BY status, code
    UNION ALL
    -- Claimed calls held until standbys have their claim's commit (src/worker/standby_gate.rs).
    SELECT 'calls waiting for standbys', w.calls::numeric,
           CASE WHEN w.calls > 0 THEN format('the longest for %s s, for %s', round(w.waiting_seconds::numeric, 1),
                concat_ws(' and ',
                    CASE WHEN current_setting('synchronous_standby_names') <> '' THEN 'synchronous_standby_names = '
                         || quote_literal(current_setting('synchronous_standby_names')) END,
                    CASE WHEN coalesce(current_setting('onboarding.wait_for_standbys', true), '') <> ''
                         THEN 'onboarding.wait_for_standbys = ' || quote_literal(current_setting('onboarding.wait_for_standbys')) END))
           END
      FROM onboarding._standby_wait() w
    UNION ALL
    -- A worker's own commit waiting for a synchronous standby (before its calls can be held).
    SELECT 'workers waiting for a synchronous standby', count(*)::numeric,
           CASE WHEN count(*) > 0 THEN format('their commits wait (SyncRep) for synchronous_standby_names = %L',
                                              current_setting('synchronous_standby_names')) END
      FROM pg_stat_activity a
     WHERE a.backend_type = 'onboarding worker' AND a.datname = current_database() AND a.wait_event = 'SyncRep'
    UNION ALL
    SELECT 'orphans found after the last promotion', t.orphans_found::numeric,
           format('timeline %s (from %s) since %s: %s', t.timeline, t.promoted_from, t.seen_at,
                  CASE WHEN t.swept_at IS NULL THEN 'sweeping Stripe'
                       ELSE format('%s Stripe objects checked by %s', t.objects_checked, t.swept_at) END)
      FROM (SELECT * FROM onboarding.timelines WHERE promoted_from IS NOT NULL ORDER BY timeline DESC LIMIT 1) t
    UNION ALL
    -- The events reader (sql/inbound.sql): Stripe's changes up to its last read are applied.
    SELECT 'Stripe events cursor lag (s)', extract(epoch FROM now() - c.polled_at)::numeric(12, 1),
           CASE WHEN c.polled_at IS NULL THEN 'Stripe''s events not read yet'
                ELSE format('read up to %s; newest event read from %s%s', c.polled_at,
                            coalesce(c.last_event_created::text, 'none'),
                            coalesce('; cursor lost (past 30 days) at ' || c.cursor_lost_at, '')) END
      FROM onboarding.events_cursor c
    UNION ALL
    SELECT 'Stripe events set aside', count(*)::numeric,
           'could not be read or applied safely: onboarding.stripe_events_set_aside says why'
      FROM onboarding.stripe_events_set_aside WHERE set_aside_at >= now() - since
    UNION ALL
    SELECT 'Stripe events applied per minute',
           round(count(*) / greatest(extract(epoch FROM since) / 60, 1), 2)::numeric, 'from the Events API'
      FROM onboarding.stripe_events_applied WHERE applied_at >= now() - since
    UNION ALL
    SELECT 'Connect accounts ready', count(*) FILTER (WHERE ready)::numeric,
           format('of %s followed (onboarding.connect_accounts)', count(*))
      FROM onboarding.connect_accounts;
$$;

CREATE VIEW onboarding.stats AS SELECT * FROM onboarding.stats_for('1 hour');

------------------------------------------------------------------------------------------------
-- Stripe against the profiles, from the latest snapshot of Stripe (or a fresh one: refresh).
------------------------------------------------------------------------------------------------

-- Every attached profile with its Stripe IDs and its table's model. An accounts_v2 profile's one
-- Account is its `customer` (the Connect column names the same Account: not listed twice).
CREATE FUNCTION onboarding._all_profiles()
RETURNS TABLE (profile_table regclass, user_id text, customer text, account text, email text, stripe_objects text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments LOOP
        RETURN QUERY
            SELECT a.profile_table, r[1], r[2], r[3], r[4], a.stripe_objects
              FROM onboarding._as_owner(a.profile_table,
                       format('SELECT t.%1$I::text, t.%2$I::text, %3$s, t.%4$I::text FROM %5$s t',
                              a.id_column, a.customer_column,
                              CASE WHEN a.stripe_objects = 'v1'
                                   THEN coalesce('t.' || quote_ident(a.connect_account_column) || '::text', 'NULL::text')
                                   ELSE 'NULL::text' END,
                              a.email_column, a.profile_table)) r;
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
                    ELSE format('the profile links %s', coalesce(min(CASE o.object WHEN 'account' THEN p.account
                                                                                 ELSE p.customer END), 'nothing')) END
          FROM onboarding.stripe_objects o
          LEFT JOIN onboarding._all_profiles() p ON p.user_id = o.user_id
         WHERE o.snapshot = snap AND o.user_id IS NOT NULL
         GROUP BY o.object, o.id, o.user_id
        HAVING NOT bool_or(coalesce(CASE o.object WHEN 'account' THEN p.account ELSE p.customer END = o.id, false))
         ORDER BY o.user_id, o.id;
    -- What could not be looked at is said, not taken for "nothing wrong".
    RETURN QUERY
        SELECT 'account', NULL::text, NULL::text, 'not checked: ' || onboarding._accounts_not_listed_why(snap)
         WHERE onboarding._accounts_not_listed_why(snap) IS NOT NULL
           AND (EXISTS (SELECT FROM onboarding.connect_accounts) OR EXISTS (SELECT FROM onboarding.attachments a
                                                                            WHERE a.connect_policy <> 'never'));
END $$;

-- Profiles whose stored Stripe ID is missing or deleted in Stripe, belongs to another user, was not
-- made by this extension for the profile (sql/ties.sql: the extension leaves such an object alone),
-- or whose email differs from the customer's: in the latest snapshot of Stripe, or in what
-- Stripe's events said since (sql/inbound.sql: a deletion, a newer email), so that a change made
-- in the Dashboard shows without a new snapshot.
CREATE FUNCTION onboarding.audit_mismatches(refresh boolean DEFAULT true)
RETURNS TABLE (profile_table regclass, user_id text, object text, stripe_id text, problem text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding._snapshot(refresh);
    -- Whole seconds, as Stripe times events: one of the snapshot's second counts as newer.
    -- An object the extension made after the snapshot began is not in it, and not missing for that.
    snapshot_began timestamptz := (SELECT s.started_at FROM onboarding.stripe_snapshots s WHERE s.id = snap);
    taken bigint := floor(extract(epoch FROM snapshot_began));
    -- Accounts the snapshot does not hold are not checked against Stripe, and said to be.
    unlisted text := onboarding._accounts_not_listed_why(snap);
BEGIN
    RETURN QUERY
        SELECT p.profile_table, p.user_id, k.object, k.stripe_id,
               CASE WHEN k.object = 'account' AND unlisted IS NOT NULL
                    THEN CASE WHEN t.stripe_id IS NULL THEN 'not made for this profile by this extension'
                              ELSE 'not checked: ' || unlisted END
                    WHEN o.id IS NULL OR d.deleted_at IS NOT NULL THEN 'missing or deleted in Stripe'
                    WHEN o.user_id IS DISTINCT FROM p.user_id THEN format('belongs to user %s in Stripe', o.user_id)
                    WHEN t.stripe_id IS NULL THEN 'not made for this profile by this extension'
                    ELSE format('email differs: Stripe has %s', coalesce(stripe.email, 'none')) END
          FROM onboarding._all_profiles() p
         CROSS JOIN LATERAL (VALUES (CASE p.stripe_objects WHEN 'v1' THEN 'customer' ELSE 'account_v2' END, p.customer),
                                    ('account', p.account)) k(object, stripe_id)
          LEFT JOIN onboarding.stripe_objects o ON o.snapshot = snap AND o.id = k.stripe_id
          LEFT JOIN onboarding.customer_changes d ON k.object = 'customer' AND d.customer_id = k.stripe_id
          LEFT JOIN onboarding.stripe_ties t ON t.stripe_id = k.stripe_id AND t.profile_table = p.profile_table
                                            AND t.user_id = p.user_id
         CROSS JOIN LATERAL (SELECT CASE WHEN d.email_as_of >= taken THEN d.stripe_email ELSE o.email END AS email) stripe
         WHERE k.stripe_id IS NOT NULL
           AND NOT (o.id IS NULL AND d.deleted_at IS NULL AND coalesce(t.tied_at >= snapshot_began, false))
           AND (o.id IS NULL OR d.deleted_at IS NOT NULL OR o.user_id IS DISTINCT FROM p.user_id OR t.stripe_id IS NULL
                OR (k.object IN ('customer', 'account_v2') AND btrim(stripe.email) IS DISTINCT FROM btrim(p.email)))
         ORDER BY p.profile_table::text, p.user_id, k.object;
END $$;
