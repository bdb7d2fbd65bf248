-- GENERATED from sql/upgrades/0.3.0--0.4.0.sql by scripts/upgrade-script: edit that file, not this one
-- (each replaced object's definition comes from where it is written once, in sql/).
-- onboarding 0.3.0 -> 0.4.0 (ALTER EXTENSION onboarding UPDATE): what 0.4.0 changes in the schema,
-- by concern, in the order it lands. Only what cannot be derived is written here (table changes,
-- data moves, drops of changed signatures, grants); each replaced function, procedure, view or
-- trigger is named on a line `-- @replace <schema.name>` and filled in from where sql/ defines it
-- (tests/support/upgrade_script.rs).

-- sql/inbound.sql: with no profile write waiting, the profile writer sleeps instead of running its
-- pass back to back ("none" had read as "due now").
-- onboarding._profile_writes_due_in, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._profile_writes_due_in() RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN due IS NOT NULL THEN greatest(extract(epoch FROM due - now()), 0)::float8 END
      FROM (SELECT least(
               (SELECT min(c.profile_retry_at) FROM onboarding.connect_accounts c WHERE c.profile_behind),
               (SELECT min(x.next_attempt_at) FROM onboarding.customer_changes x WHERE NOT x.handled)) AS due) next
$$;

-- sql/inbound.sql: a reader stopped in the middle of a poll (restart, crash, failover) no longer
-- keeps the events reader's turn for a minute: the next poll takes it over once its holder is gone;
-- a disconnected account is no longer read from Stripe at every poll or daily.
-- onboarding._events_poll_begin, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._events_poll_begin(refresh_at_most integer, every interval)
RETURNS TABLE (polling boolean, due_in double precision, last_event_id text, accounts_to_refresh text[],
               since_link double precision, last_polled_at bigint, events_to_retry text[],
               customers_to_refresh text[])
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c SET next_poll_at = now() + every WHERE c.next_poll_at > now() + every;
    -- The turn is free, or its holder is gone (stopped mid-poll by a restart, a crash or a failover:
    -- no live process with its pid started before it took the turn), or has held it for a minute.
    UPDATE onboarding.events_cursor c SET polling_pid = pg_backend_pid(), polling_since = now()
     WHERE c.next_poll_at <= now()
       AND (c.polling_pid IS NULL OR c.polling_since < now() - interval '1 minute'
            OR NOT EXISTS (SELECT FROM pg_stat_activity a
                            WHERE a.pid = c.polling_pid AND a.backend_start <= c.polling_since));
    polling := FOUND;
    SELECT greatest(extract(epoch FROM c.next_poll_at - now()), 0), c.last_event_id,
           extract(epoch FROM now() - c.last_link_at), floor(extract(epoch FROM c.polled_at))::bigint
      INTO due_in, last_event_id, since_link, last_polled_at
      FROM onboarding.events_cursor c;
    IF polling THEN
        -- Those due first, then those watched since an account link, then a few of those not
        -- heard of for a day (never, first): each account is read from Stripe itself at least
        -- daily (up to 28,800 a day at the default interval), whatever the event list carries.
        accounts_to_refresh := ARRAY(
            SELECT d.account_id
              FROM (SELECT a.account_id, 0 AS rank FROM onboarding.connect_accounts a WHERE a.refresh_due
                    UNION ALL
                    SELECT a.account_id, 1 FROM onboarding.connect_accounts a
                     WHERE a.watch_until > now() AND NOT a.ready AND a.deauthorized_at IS NULL
                    UNION ALL
                    -- (A disconnected account answers nothing but "no access" any more.)
                    (SELECT a.account_id, 2 FROM onboarding.connect_accounts a
                      WHERE (a.as_of IS NULL OR a.as_of < extract(epoch FROM now() - interval '1 day'))
                        AND a.deauthorized_at IS NULL
                      ORDER BY a.as_of NULLS FIRST LIMIT 5)) d
             GROUP BY d.account_id ORDER BY min(d.rank), d.account_id LIMIT refresh_at_most);
        events_to_retry := ARRAY(SELECT s.event_id FROM onboarding.stripe_events_set_aside s
                                  WHERE s.retry_at <= now() ORDER BY s.retry_at LIMIT 5);
        customers_to_refresh := ARRAY(SELECT x.customer_id FROM onboarding.customer_changes x
                                       WHERE x.refresh_due ORDER BY x.customer_id LIMIT refresh_at_most);
    END IF;
    RETURN NEXT;
END $$;

-- sql/attach.sql: dropping an attached table also stops following its profiles' Connect accounts.
-- onboarding._forget_dropped_tables, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dropped oid;
    dropped_name text;
    reason text;
BEGIN
    FOR dropped, dropped_name IN
        SELECT o.objid, o.object_identity FROM pg_event_trigger_dropped_objects() o
         WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0 AND o.object_type IN ('table', 'partitioned table')
           AND o.objid IN (SELECT a.profile_table FROM onboarding.attachments a)
    LOOP
        reason := format('table %s was dropped', dropped_name);
        DELETE FROM onboarding.intake i WHERE i.profile_table = dropped;
        WITH cancelled AS (
            UPDATE onboarding.jobs j SET state = onboarding._cancelled(), last_error = reason
             WHERE j.profile_table = dropped AND j.state = onboarding._pending()
            RETURNING j.id, j.user_id)
        INSERT INTO onboarding.events (job_id, user_id, step, detail)
        SELECT c.id, c.user_id, 'cancelled', jsonb_build_object('reason', reason, 'by', session_user::text)
          FROM cancelled c;
        DELETE FROM onboarding.attachments a WHERE a.profile_table = dropped;
        -- Its profiles are gone: their accounts are no longer followed (nor read from Stripe daily).
        DELETE FROM onboarding.connect_accounts c WHERE c.profile_table = dropped;
        RAISE NOTICE 'onboarding: %: detached, its waiting jobs cancelled', reason;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'onboarding: could not detach a dropped table: %', SQLERRM
        USING HINT = 'SELECT onboarding.detach(oid) for it by hand.';
END $$;

-- sql/operations.sql: reconcile no longer takes the audit's "not checked" line (accounts Stripe
-- refused to list) for an orphan with no id, which made reconcile(dry_run => false) fail.
-- onboarding.reconcile, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.reconcile(dry_run boolean DEFAULT true, profile_table regclass DEFAULT NULL)
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
        target_column := CASE r.object WHEN 'customer' THEN a.customer_column ELSE a.connect_account_column END;
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
                PERFORM onboarding._tie(stripe_id, r.object, r.profile_table, r.user_id);
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
                    CASE r.object WHEN 'customer' THEN 'create_customer' ELSE 'create_connect_account' END, 'reconcile');
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
                tie.profile_table := coalesce(reconcile.profile_table,
                                              (SELECT t.profile_table FROM onboarding.attachments t ORDER BY 1 LIMIT 1));
                PERFORM onboarding._tie(r.stripe_id, r.object, tie.profile_table, r.user_id);
            END IF;
            PERFORM onboarding._enqueue_for_customer(tie.profile_table,
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

-- sql/api.sql: a profile the calling transaction updated (not inserted) is no longer refused with
-- 55000 "inserted by this transaction" by get_or_create_customer and create_account_link.
-- onboarding._profile, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._profile(a onboarding.attachments, user_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    profile jsonb;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'onboarding: user_id is NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF btrim(user_id) = '' THEN
        RAISE EXCEPTION 'onboarding: user_id is empty' USING ERRCODE = 'invalid_parameter_value';
    ELSIF length(user_id) > 500 THEN
        RAISE EXCEPTION 'onboarding: user_id is % characters long', length(user_id)
            USING ERRCODE = 'string_data_right_truncation', HINT = 'Stripe metadata values hold at most 500 characters.';
    END IF;
    BEGIN
        -- Only a profile the caller may read itself (its privileges, the table's row-level
        -- security): applications act for their own users, not for anyone whose id they know.
        IF onboarding._caller_reads_profile(a, user_id) = 'refused' THEN
            RAISE EXCEPTION 'onboarding: no profile % that this role may read in %', quote_literal(user_id), a.profile_table
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'The calling role must be able to SELECT the profile: its privileges on the table and '
                             'the table''s row-level security policies decide.';
        END IF;
        -- Then read as the table's owner (src/tables.rs). A row this transaction wrote is one it
        -- inserted only if its insert also wrote the intake (an UPDATE sets xmin too, of a profile
        -- the worker sees committed); the intake is read only then, and is normally empty.
        SELECT jsonb_build_object('id', r[1], 'email', r[2], 'customer', r[3], 'connect_account', r[4],
                                  'inserted_by_this_transaction',
                                  onboarding._inserted_by_this_transaction(r[5]::bigint)
                                  AND EXISTS (SELECT FROM onboarding.intake i
                                               WHERE i.profile_table = a.profile_table AND i.user_id = r[1]
                                                 AND onboarding._inserted_by_this_transaction(i.xmin::text::bigint)))
          INTO profile
          FROM onboarding._as_owner(a.profile_table,
                   format('SELECT %1$I::text, %2$I::text, %3$I::text, %4$s, xmin::text FROM %5$s WHERE %1$I = $1::%6$s',
                          a.id_column, a.email_column, a.customer_column,
                          coalesce(quote_ident(a.connect_account_column) || '::text', 'NULL::text'),
                          a.profile_table, a.id_type),
                   ARRAY[user_id]) r;
    EXCEPTION
        WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'onboarding: % is not a valid % (the type of %.%)', onboarding._quoted_prefix(user_id), a.id_type,
                    a.profile_table, quote_ident(a.id_column)
                USING ERRCODE = 'invalid_text_representation';
        WHEN numeric_value_out_of_range THEN
            RAISE EXCEPTION 'onboarding: % is out of range for % (the type of %.%)', onboarding._quoted_prefix(user_id),
                    a.id_type, a.profile_table, quote_ident(a.id_column)
                USING ERRCODE = 'numeric_value_out_of_range';
    END;
    IF profile IS NULL THEN
        RAISE EXCEPTION 'onboarding: no profile with id % in %', quote_literal(user_id), a.profile_table
            USING ERRCODE = 'no_data_found',
                  HINT = 'Stripe resources are created for committed profiles only: insert and commit the profile first.';
    END IF;
    RETURN profile;
END $$;

-- sql/audits.sql: audit_mismatches(refresh => false) no longer reports an object the extension
-- made after the last snapshot began as "missing or deleted in Stripe".
-- onboarding.audit_mismatches, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.audit_mismatches(refresh boolean DEFAULT true)
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
         CROSS JOIN LATERAL (VALUES ('customer', p.customer), ('account', p.account)) k(object, stripe_id)
          LEFT JOIN onboarding.stripe_objects o ON o.snapshot = snap AND o.id = k.stripe_id
          LEFT JOIN onboarding.customer_changes d ON k.object = 'customer' AND d.customer_id = k.stripe_id
          LEFT JOIN onboarding.stripe_ties t ON t.stripe_id = k.stripe_id AND t.profile_table = p.profile_table
                                            AND t.user_id = p.user_id
         CROSS JOIN LATERAL (SELECT CASE WHEN d.email_as_of >= taken THEN d.stripe_email ELSE o.email END AS email) stripe
         WHERE k.stripe_id IS NOT NULL
           AND NOT (o.id IS NULL AND d.deleted_at IS NULL AND coalesce(t.tied_at >= snapshot_began, false))
           AND (o.id IS NULL OR d.deleted_at IS NOT NULL OR o.user_id IS DISTINCT FROM p.user_id OR t.stripe_id IS NULL
                OR (k.object = 'customer' AND btrim(stripe.email) IS DISTINCT FROM btrim(p.email)))
         ORDER BY p.profile_table::text, p.user_id, k.object;
END $$;

-- sql/transitions.sql: the worker's claim and record are one statement each (fewer statements per
-- job): committed inserts promoted and due jobs claimed together, and when requests were sent
-- recorded with the created customers.
-- onboarding._promote_and_claim, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._promote_and_claim(promote_at_most integer, max_jobs integer, horizon interval,
                                               after_run_at timestamptz[], after_id bigint[], reserved integer[])
RETURNS TABLE (promoted bigint, job_id bigint, kind text, user_id text, idempotency_key text, attempts integer,
               stripe_id text, request_params jsonb, look_up_first boolean,
               profile_found boolean, email text, customer_id text, connect_account_id text, lane smallint,
               run_at timestamptz, finished boolean)
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
-- onboarding._record_sent_and_created, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._record_sent_and_created(sent_jobs bigint[], sent_attempts integer[],
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
REVOKE ALL ON FUNCTION onboarding._promote_and_claim(integer, integer, interval, timestamptz[], bigint[], integer[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION onboarding._record_sent_and_created(bigint[], integer[], double precision[], bigint[], text[],
                                                           jsonb[]) FROM PUBLIC;

-- sql/transitions.sql: an application transaction still open after enqueueing a job for a profile
-- no longer holds up every claim (their promotion waited for it, then failed): the promotion skips
-- that profile's insert until then.
-- onboarding._promote_intake_rows, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._promote_intake_rows(max_rows integer, only_row tid) RETURNS bigint
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
-- onboarding._promote_intake, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._promote_intake(max_rows integer) RETURNS bigint
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
REVOKE ALL ON FUNCTION onboarding._promote_intake_rows(integer, tid) FROM PUBLIC;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();

-- src/stripe_key.rs, sql/audits.sql: onboarding.stats says how many workers run and whether their
-- Stripe key is usable (jobs waited for a missing or refused key with only the server log saying so).
-- onboarding._worker_key_states, as sql/ defines it
CREATE OR REPLACE FUNCTION "_worker_key_states"() RETURNS TEXT[] /* Vec < String > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_key_states_wrapper';
REVOKE ALL ON FUNCTION onboarding._worker_key_states() FROM PUBLIC;
-- onboarding.stats_for, as sql/ defines it
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
    SELECT 'workers whose key may not do Connect', count(*) FILTER (WHERE k = 'connect refused')::numeric,
           'Connect jobs wait; customers go on'
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
