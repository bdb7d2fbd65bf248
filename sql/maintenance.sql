-- onboarding: upkeep the workers do on their own, which a DBA may also run: rescuing jobs whose
-- worker went away, pruning finished jobs (retention), and taking the snapshot of Stripe that the
-- audits and reconcile read (tables in sql/schema.sql).

------------------------------------------------------------------------------------------------
-- Rescue: jobs claimed by a worker that is gone or overran its lease go back to the queue.
------------------------------------------------------------------------------------------------

-- Puts back jobs claimed by a worker process that no longer exists (crash, kill, restart, or
-- another server's before a failover), or running for longer than the lease (a worker alive but
-- stuck; its late result is then refused by _finish_job). A claimer is alive only if a process
-- with its pid *and* start time runs here: pids are reused, and after a promotion a live pid may
-- be anything. Attempts were counted at claim time, so a job that keeps killing its worker runs
-- out of them and is parked.
CREATE FUNCTION onboarding._requeue_abandoned(max_attempts integer, lease interval) RETURNS integer
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
                OR NOT EXISTS (SELECT FROM pg_stat_activity s
                                WHERE s.pid = j.claimed_by
                                  -- NULL: claimed by a release that did not record it
                                  AND s.backend_start = coalesce(j.claimer_started_at, s.backend_start)))
        RETURNING j.id, j.user_id, j.state, j.attempts)
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT id, user_id, CASE WHEN state = onboarding._dead() THEN 'dead' ELSE 'requeued' END,
           jsonb_build_object('reason', 'the worker that claimed it exited or overran its lease', 'attempts', attempts)
      FROM abandoned;
    GET DIAGNOSTICS requeued = ROW_COUNT;
    RETURN requeued;
END $$;

------------------------------------------------------------------------------------------------
-- Retention: finished jobs (succeeded, skipped, cancelled) and their events are deleted after
-- onboarding.retention, and so are the events outside any job (what Stripe said of accounts and
-- customers, reconcile's actions) and what Stripe said of customers once the audits no longer read
-- it; dead and orphaned jobs are kept until a human deals with them.
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
         WHERE onboarding._is_done(state) AND finished_at < now() - keep
         ORDER BY finished_at LIMIT batch FOR UPDATE SKIP LOCKED),
    gone_events AS (DELETE FROM onboarding.events e USING doomed d WHERE e.job_id = d.id)
    DELETE FROM onboarding.jobs j USING doomed d WHERE j.id = d.id;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    DELETE FROM onboarding.events e
     WHERE e.id = ANY (ARRAY(SELECT o.id FROM onboarding.events o
                              WHERE o.job_id IS NULL AND o.at < now() - keep ORDER BY o.at LIMIT batch));
    -- What Stripe said of customers, once the audits no longer read it: an email that a later
    -- snapshot has (audit_mismatches reads only those newer than its snapshot), a deletion whose
    -- customer no profile links any longer (recreated, or linked by none). A flagged deletion
    -- stays: the profile still links the deleted customer.
    DELETE FROM onboarding.customer_changes c
     WHERE c.customer_id = ANY (ARRAY(
               SELECT x.customer_id FROM onboarding.customer_changes x
                WHERE x.handled AND x.updated_at < now() - keep
                  AND CASE WHEN x.deleted_at IS NOT NULL THEN x.outcome IN ('recreated', 'not linked')
                           ELSE x.email_as_of < (SELECT floor(extract(epoch FROM max(s.started_at)))
                                                   FROM onboarding.stripe_snapshots s WHERE s.finished_at IS NOT NULL) END
                ORDER BY x.updated_at LIMIT batch));
    RETURN pruned;
END $$;

------------------------------------------------------------------------------------------------
-- The snapshot of Stripe: taken page by page by a worker (which alone has the key), latest only.
------------------------------------------------------------------------------------------------

CREATE FUNCTION onboarding._snapshot_begin() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM onboarding.stripe_snapshots;  -- one snapshot at a time: the latest
    INSERT INTO onboarding.stripe_snapshots DEFAULT VALUES RETURNING id;
$$;

CREATE FUNCTION onboarding._snapshot_add(snapshot bigint, kind text, page jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.stripe_objects (snapshot, id, object, user_id, email)
    SELECT snapshot, o->>'id', kind, o->>'user_id', o->>'email' FROM jsonb_array_elements(page) o
    -- A v2 Account with a merchant configuration is listed by /v1/accounts too: listed last, the
    -- v2 answer stands (its contact email).
    ON CONFLICT (snapshot, id) DO UPDATE SET object = EXCLUDED.object, user_id = EXCLUDED.user_id, email = EXCLUDED.email
       WHERE EXCLUDED.object = 'account_v2';
    UPDATE onboarding.stripe_snapshots
       SET pages = pages + 1,
           customers = customers + CASE kind WHEN 'customer' THEN jsonb_array_length(page) ELSE 0 END,
           accounts = accounts + CASE WHEN kind IN ('account', 'account_v2') THEN jsonb_array_length(page) ELSE 0 END
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

-- Why snapshot `snap` holds no Connect accounts (NULL: it does).
CREATE FUNCTION onboarding._accounts_not_listed_why(snap bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN NOT s.accounts_listed
                THEN coalesce('Stripe refused to list them: ' || s.accounts_not_listed_why,
                              'Connect is not in use here (no Connect policy, account or job)') END
      FROM onboarding.stripe_snapshots s WHERE s.id = snap
$$;

-- The latest finished snapshot, taking a fresh one first if asked. Says so when it holds no
-- accounts (src/maintenance/snapshot.rs: Connect not in use, or Stripe refused to list them).
CREATE FUNCTION onboarding._snapshot(refresh boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    latest bigint;
BEGIN
    IF refresh THEN
        latest := onboarding.refresh_stripe_snapshot();
    ELSE
        SELECT id INTO latest FROM onboarding.stripe_snapshots WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1;
        IF latest IS NULL THEN
            RAISE EXCEPTION 'onboarding: no snapshot of Stripe yet' USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call it with refresh => true, or SELECT onboarding.refresh_stripe_snapshot().';
        END IF;
    END IF;
    IF NOT (SELECT s.accounts_listed FROM onboarding.stripe_snapshots s WHERE s.id = latest) THEN
        RAISE NOTICE 'onboarding: Stripe snapshot % holds customers only: %; Connect accounts are not checked', latest,
            onboarding._accounts_not_listed_why(latest);
    END IF;
    RETURN latest;
END $$;
