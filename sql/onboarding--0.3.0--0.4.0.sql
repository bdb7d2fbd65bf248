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
DROP FUNCTION onboarding._events_poll_begin(integer, interval);  -- its result gains the v2 columns (issue 31)
-- onboarding._events_poll_begin, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._events_poll_begin(refresh_at_most integer, every interval)
RETURNS TABLE (polling boolean, due_in double precision, last_event_id text, accounts_to_refresh text[],
               since_link double precision, last_polled_at bigint, events_to_retry text[],
               customers_to_refresh text[], read_v2_events boolean, v2_events_since bigint,
               v2_accounts_to_refresh text[])
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
        read_v2_events := EXISTS (SELECT FROM onboarding.attachments a WHERE a.stripe_objects = 'accounts_v2');
        v2_events_since := (SELECT c.v2_events_since FROM onboarding.events_cursor c);
        v2_accounts_to_refresh := ARRAY(SELECT a.account_id FROM onboarding.connect_accounts a
                                         WHERE a.account_id = ANY (accounts_to_refresh)
                                           AND a.stripe_objects = 'accounts_v2');
    END IF;
    RETURN NEXT;
END $$;
REVOKE ALL ON FUNCTION onboarding._events_poll_begin(integer, interval) FROM PUBLIC;

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

-- sql/transitions.sql: the worker's claim and record are one statement each (fewer statements per
-- job): committed inserts promoted and due jobs claimed together, and when requests were sent
-- recorded with the created customers.
-- onboarding._promote_and_claim, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._promote_and_claim(promote_at_most integer, max_jobs integer, horizon interval,
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

-- Issue 31, Accounts v2 (sql/schema.sql, sql/attach.sql, sql/transitions.sql): a table attached
-- with stripe_objects => 'accounts_v2' gets one Accounts v2 Account per profile. Existing tables
-- stay v1, unchanged.
ALTER TABLE onboarding.attachments
    ADD COLUMN stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2')),
    ADD COLUMN display_name_column name,
    ADD COLUMN account_options jsonb,
    ADD CONSTRAINT attachments_options_only_for_accounts_v2
        CHECK ((stripe_objects = 'accounts_v2') = (account_options IS NOT NULL)
               AND (display_name_column IS NULL OR stripe_objects = 'accounts_v2'));
DROP FUNCTION onboarding.attach(regclass, name, name, name, name, text, text, jsonb);
-- onboarding.attach, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.attach(
    profile_table regclass,
    id_column name DEFAULT 'id',
    email_column name DEFAULT 'email',
    customer_column name DEFAULT NULL,
    connect_account_column name DEFAULT NULL,
    connect_policy text DEFAULT 'never',
    connect_condition text DEFAULT NULL,
    readiness_columns jsonb DEFAULT NULL,
    stripe_objects text DEFAULT 'v1',
    display_name_column name DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id_type regtype;
    text_types CONSTANT regtype[] := ARRAY['text', 'character varying']::regtype[];
    not_boolean text;
    generated text;
    attached_as text;
BEGIN
    IF profile_table IS NULL THEN
        RAISE EXCEPTION 'onboarding.attach: profile_table is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF stripe_objects IS NULL OR stripe_objects NOT IN ('v1', 'accounts_v2') THEN
        RAISE EXCEPTION 'onboarding.attach: stripe_objects must be v1 or accounts_v2, not %',
                coalesce(onboarding._quoted_prefix(stripe_objects), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'v1: a Customer per profile (and an Express account by the Connect policy); accounts_v2: one '
                         'Accounts v2 Account per profile, its customer and, by the Connect policy, its connected account.';
    END IF;
    IF display_name_column IS NOT NULL AND stripe_objects = 'v1' THEN
        RAISE EXCEPTION 'onboarding.attach: display_name_column goes with stripe_objects => ''accounts_v2'''
            USING ERRCODE = 'invalid_parameter_value', HINT = 'v1 Customers are sent the email and the user id only.';
    END IF;
    customer_column := coalesce(customer_column,
                                CASE stripe_objects WHEN 'v1' THEN 'stripe_customer_id' ELSE 'stripe_account_id' END);
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = profile_table) THEN
        RAISE EXCEPTION 'onboarding.attach: no table has oid %', profile_table::oid
            USING ERRCODE = 'undefined_table',
                  HINT = 'The table was dropped, or the oid is mistyped: pass the table by name, attach(''public.profiles'').';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = profile_table) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'onboarding.attach: % is not a table', profile_table
            USING ERRCODE = 'wrong_object_type', HINT = 'Attach the table that holds the profiles, not a view.';
    END IF;
    PERFORM onboarding._check_attachable(profile_table);
    -- A table's profiles keep the model their objects were made with: a v1 Customer id is no
    -- Account id, nor the other way round.
    SELECT a.stripe_objects INTO attached_as FROM onboarding.attachments a WHERE a.profile_table = attach.profile_table;
    IF attached_as <> stripe_objects AND (
           EXISTS (SELECT FROM onboarding.stripe_ties t WHERE t.profile_table = attach.profile_table)
           OR EXISTS (SELECT FROM onboarding.jobs j WHERE j.profile_table = attach.profile_table
                         AND onboarding._is_open(j.state))) THEN
        RAISE EXCEPTION 'onboarding.attach: % is attached with stripe_objects => %, and has Stripe objects or jobs of that model',
                profile_table, quote_literal(attached_as)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A table switches model only before any of its profiles is provisioned: a Customer does not '
                         'become an Account. See "Moving to Accounts v2" in docs/src/guides/accounts-v2.md.';
    END IF;
    id_type := onboarding._column_type(profile_table, id_column, 'id',
        ARRAY['uuid', 'text', 'character varying', 'bigint', 'integer']::regtype[]);
    PERFORM onboarding._column_type(profile_table, email_column, 'email', text_types || coalesce(to_regtype('citext'), 'text'));
    PERFORM onboarding._column_type(profile_table, customer_column,
                                    CASE stripe_objects WHEN 'v1' THEN 'customer' ELSE 'account' END, text_types);
    IF display_name_column IS NOT NULL THEN
        PERFORM onboarding._column_type(profile_table, display_name_column, 'display name', text_types);
    END IF;
    -- The Connect column is optional: by default, used when the table has one.
    IF connect_account_column IS NULL AND EXISTS (
        SELECT FROM pg_attribute WHERE attrelid = profile_table AND attname = 'stripe_connect_account_id'
           AND attnum > 0 AND NOT attisdropped) THEN
        connect_account_column := 'stripe_connect_account_id';
    END IF;
    IF connect_account_column IS NOT NULL THEN
        PERFORM onboarding._column_type(profile_table, connect_account_column, 'connect account', text_types);
    END IF;
    -- Profile columns kept in step with what Stripe says of the account (sql/inbound.sql).
    IF readiness_columns IS NOT NULL THEN
        IF jsonb_typeof(readiness_columns) <> 'object' OR readiness_columns = '{}' OR EXISTS (
               SELECT FROM jsonb_each(readiness_columns) c
                WHERE c.key NOT IN ('ready', 'charges_enabled', 'payouts_enabled', 'details_submitted')
                   OR jsonb_typeof(c.value) <> 'string') THEN
            RAISE EXCEPTION 'onboarding.attach: readiness_columns names a boolean column for any of ready, charges_enabled, payouts_enabled, details_submitted'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'For example: readiness_columns => ''{"ready": "stripe_account_ready", "payouts_enabled": "stripe_payouts_enabled"}''';
        END IF;
        IF connect_account_column IS NULL THEN
            RAISE EXCEPTION 'onboarding.attach: readiness_columns needs a Connect account column' USING ERRCODE = 'undefined_column',
                  HINT = 'Name it with connect_account_column => ''...''.';
        END IF;
        SELECT string_agg(format('%s (%s)', onboarding._quoted_prefix(c.value), coalesce(format_type(a.atttypid, NULL), 'no such column')), ', ')
          INTO not_boolean
          FROM jsonb_each_text(readiness_columns) c
          LEFT JOIN pg_attribute a ON a.attrelid = profile_table AND a.attname = c.value AND a.attnum > 0 AND NOT a.attisdropped
         WHERE a.atttypid IS DISTINCT FROM 'boolean'::regtype;
        IF not_boolean IS NOT NULL THEN
            RAISE EXCEPTION 'onboarding.attach: readiness columns of % must be boolean columns: %', profile_table, not_boolean
                USING ERRCODE = 'datatype_mismatch',
                      HINT = format('For example: ALTER TABLE %s ADD COLUMN stripe_payouts_enabled boolean NOT NULL DEFAULT false;', profile_table);
        END IF;
    END IF;

    -- Each column for one purpose, and the ones the extension writes writable: otherwise every
    -- later write-back would fail (with a WARNING each time) instead of attach() now.
    IF (SELECT count(*) <> count(DISTINCT c) FROM unnest(ARRAY[id_column, email_column, customer_column, connect_account_column,
                                                                 display_name_column]
                                                           || ARRAY(SELECT r.value::name
                                                                      FROM jsonb_each_text(coalesce(readiness_columns, '{}')) r)) c
         WHERE c IS NOT NULL) THEN
        RAISE EXCEPTION 'onboarding.attach: a column of % is named for two purposes', profile_table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The id, email, customer, Connect account and readiness columns must be distinct columns.';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ') INTO generated
      FROM pg_attribute a
     WHERE a.attrelid = profile_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''
       AND a.attname = ANY (ARRAY[customer_column, connect_account_column]
                            || ARRAY(SELECT r.value::name FROM jsonb_each_text(coalesce(readiness_columns, '{}')) r));
    IF generated IS NOT NULL THEN
        RAISE EXCEPTION 'onboarding.attach: % of % is a generated column, which the extension could never write', generated, profile_table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Name plain columns for the customer, the Connect account and the readiness.';
    END IF;

    INSERT INTO onboarding.attachments AS a
        (profile_table, id_column, id_type, email_column, customer_column, connect_account_column, readiness_columns,
         stripe_objects, display_name_column, account_options)
    VALUES (profile_table, id_column, id_type, email_column, customer_column, connect_account_column, readiness_columns,
            stripe_objects, display_name_column,
            CASE stripe_objects WHEN 'accounts_v2' THEN onboarding._account_options('{}') END)
    ON CONFLICT ON CONSTRAINT attachments_pkey DO UPDATE
        SET id_column = EXCLUDED.id_column, id_type = EXCLUDED.id_type, email_column = EXCLUDED.email_column,
            customer_column = EXCLUDED.customer_column, connect_account_column = EXCLUDED.connect_account_column,
            readiness_columns = EXCLUDED.readiness_columns, stripe_objects = EXCLUDED.stripe_objects,
            display_name_column = EXCLUDED.display_name_column,
            -- Attached again: the options set for its Accounts stay.
            account_options = CASE WHEN EXCLUDED.stripe_objects = 'accounts_v2'
                                   THEN coalesce(a.account_options, EXCLUDED.account_options) END;
    -- The table's accounts are written to the new columns at the next poll.
    UPDATE onboarding.connect_accounts c SET profile_behind = true
     WHERE c.profile_table = attach.profile_table AND readiness_columns IS NOT NULL;

    PERFORM onboarding._create_triggers(a) FROM onboarding.attachments a WHERE a.profile_table = attach.profile_table;
    PERFORM onboarding.set_connect_policy(profile_table, connect_policy, connect_condition);
    IF stripe_objects = 'accounts_v2' THEN
        RETURN format('onboarding: attached to %s with Accounts v2 (id %I, email %I, account %I, display name %s, '
                      'connect account %s, connect policy %s%s)',
            profile_table, id_column, email_column, customer_column, coalesce(quote_ident(display_name_column), 'none'),
            coalesce(quote_ident(connect_account_column), 'none'),
            connect_policy || coalesce(': ' || connect_condition, ''),
            coalesce(', readiness columns ' || readiness_columns::text, ''));
    END IF;
    RETURN format('onboarding: attached to %s (id %I, email %I, customer %I, connect account %s, connect policy %s%s)',
        profile_table, id_column, email_column, customer_column,
        coalesce(quote_ident(connect_account_column), 'none'),
        connect_policy || coalesce(': ' || connect_condition, ''),
        coalesce(', readiness columns ' || readiness_columns::text, ''));
END $$;
COMMENT ON FUNCTION onboarding.attach IS
    'Provision a Stripe customer for every profile inserted into this table, after the insert commits';
REVOKE ALL ON FUNCTION onboarding.attach(regclass, name, name, name, name, text, text, jsonb, text, name) FROM PUBLIC;
-- onboarding.set_account_options, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.set_account_options(profile_table regclass, merchant_capabilities text[] DEFAULT NULL,
                                               recipient_capabilities text[] DEFAULT NULL, dashboard text DEFAULT NULL,
                                               fees_collector text DEFAULT NULL, losses_collector text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    chosen jsonb;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = set_account_options.profile_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: table % is not attached', profile_table
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'attach() it first.';
    ELSIF a.stripe_objects <> 'accounts_v2' THEN
        RAISE EXCEPTION 'onboarding: % makes v1 objects; account options are for accounts_v2 tables', profile_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'v1 Connect accounts are Express accounts with card payments and transfers.';
    END IF;
    -- Checked and normalized by the parser the worker reads them with (src/account_options.rs).
    chosen := onboarding._account_options(a.account_options || jsonb_strip_nulls(jsonb_build_object(
        'merchant', to_jsonb(merchant_capabilities), 'recipient', to_jsonb(recipient_capabilities),
        'dashboard', dashboard, 'fees_collector', fees_collector, 'losses_collector', losses_collector)));
    UPDATE onboarding.attachments t SET account_options = chosen
     WHERE t.profile_table = set_account_options.profile_table;
    RETURN format('onboarding: Accounts of %s: %s', profile_table, chosen);
END $$;
REVOKE ALL ON FUNCTION onboarding.set_account_options(regclass, text[], text[], text, text, text) FROM PUBLIC;
-- onboarding._account_options, as sql/ defines it
CREATE OR REPLACE FUNCTION "_account_options"(
	"options" jsonb /* JsonB */
) RETURNS jsonb /* JsonB */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'account_options_wrapper';
REVOKE ALL ON FUNCTION onboarding._account_options(jsonb) FROM PUBLIC;
-- onboarding._column_type, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._column_type(tbl regclass, col name, role text, allowed regtype[]) RETURNS regtype
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col_type regtype;
BEGIN
    IF col IS NULL OR col = '' THEN
        RAISE EXCEPTION 'onboarding: the % column name is empty', role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'onboarding: table % has no column % (the % column)', tbl, quote_ident(col), role
            USING ERRCODE = 'undefined_column',
                  HINT = format('Columns of %s: %s. Name the right one with %s_column => ''...''.', tbl,
                      (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                        WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped),
                      CASE role WHEN 'connect account' THEN 'connect_account' WHEN 'account' THEN 'customer'
                                WHEN 'display name' THEN 'display_name' ELSE role END);
    END IF;
    IF NOT col_type = ANY (allowed) THEN
        RAISE EXCEPTION 'onboarding: column %.% is of type %, but the % column must be %',
                tbl, quote_ident(col), col_type, role, array_to_string(allowed, ' or ')
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    RETURN col_type;
END $$;
-- onboarding._create_triggers, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._create_triggers(a onboarding.attachments) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM onboarding._drop_triggers(a.profile_table);
    EXECUTE format($sql$
        CREATE TRIGGER onboarding_enqueue AFTER INSERT ON %1$s
        FOR EACH ROW EXECUTE FUNCTION onboarding._intake_profile(%2$L, %3$L, %4$L)$sql$,
        a.profile_table, a.id_column, a.customer_column, a.profile_table::oid);
    EXECUTE format($sql$
        CREATE TRIGGER onboarding_compensate AFTER DELETE ON %s
        REFERENCING OLD TABLE AS onboarding_deleted_profiles
        FOR EACH STATEMENT EXECUTE FUNCTION onboarding._compensate_deleted_profiles(%L, %L, %L)$sql$,
        a.profile_table, a.id_column, a.customer_column,
        -- An accounts_v2 table's Connect column names the same Account: closed once, as the customer.
        CASE WHEN a.stripe_objects = 'v1' THEN coalesce(a.connect_account_column, '') ELSE '' END);
    EXECUTE format($sql$
        CREATE TRIGGER onboarding_sync_email AFTER UPDATE OF %2$I ON %1$s
        FOR EACH ROW WHEN (OLD.%2$I IS DISTINCT FROM NEW.%2$I)
        EXECUTE FUNCTION onboarding._enqueue_email_update(%3$L, %4$L, %5$L)$sql$,
        a.profile_table, a.email_column, a.id_column, a.customer_column, a.profile_table::oid);
END $$;
-- onboarding.set_connect_policy, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.set_connect_policy(profile_table regclass, policy text, condition text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = set_connect_policy.profile_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: table % is not attached', profile_table
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF policy IS NULL OR policy NOT IN ('never', 'always', 'when') THEN
        RAISE EXCEPTION 'onboarding: connect policy must be never, always or when, not %', coalesce(onboarding._quoted_prefix(policy), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (policy = 'when') <> (nullif(btrim(condition), '') IS NOT NULL) THEN
        RAISE EXCEPTION 'onboarding: a condition goes with policy ''when'', and only with it'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: set_connect_policy(''public.profiles'', ''when'', ''role = ''''provider'''''')';
    END IF;
    IF policy <> 'never' AND a.connect_account_column IS NULL THEN
        RAISE EXCEPTION 'onboarding: % has no Connect account column', profile_table
            USING ERRCODE = 'undefined_column',
                  HINT = CASE a.stripe_objects WHEN 'v1' THEN 'attach() it again with connect_account_column => ''...''.'
                         ELSE 'attach() it again with connect_account_column => ''...'': it receives the Account''s id '
                              'once the Account is a connected account.' END;
    END IF;
    a.connect_policy := policy;
    a.connect_condition := condition;
    IF policy = 'when' THEN
        -- One expression (src/condition.rs), then planned (not run) as the table's owner.
        BEGIN
            PERFORM onboarding._check_connect_condition(condition);
        EXCEPTION WHEN syntax_error THEN
            RAISE EXCEPTION 'onboarding: the connect condition % is not one SQL expression: %',
                    onboarding._quoted_prefix(condition), left(SQLERRM, 200)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Write one boolean expression over the profile''s columns, e.g. role = ''provider''.';
        END;
        BEGIN
            PERFORM FROM onboarding._as_owner(profile_table, onboarding._connect_condition_query(a, 'NULL') || ' LIMIT 0');
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'onboarding: the connect condition % does not work on %: %',
                    onboarding._quoted_prefix(condition), profile_table, left(SQLERRM, 200)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Write a boolean SQL expression over the profile''s columns, e.g. role = ''provider''.';
        END;
    END IF;
    UPDATE onboarding.attachments t SET connect_policy = policy, connect_condition = condition
     WHERE t.profile_table = set_connect_policy.profile_table;
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = profile_table AND tgname = 'onboarding_connect') THEN
        EXECUTE format('DROP TRIGGER onboarding_connect ON %s', profile_table);
    END IF;
    IF policy <> 'never' THEN
        EXECUTE format($sql$
            CREATE TRIGGER onboarding_connect AFTER UPDATE %5$s ON %1$s
            FOR EACH ROW WHEN (NEW.%2$I IS NULL AND NEW.%3$I IS NOT NULL)
            EXECUTE FUNCTION onboarding._enqueue_connect_if_due(%4$L)$sql$,
            profile_table, a.connect_account_column, a.customer_column, profile_table::oid,
            onboarding._connect_trigger_columns(a));
    END IF;
    RETURN format('onboarding: Connect accounts for %s: %s', profile_table, policy || coalesce(': ' || condition, ''));
END $$;
-- onboarding._follow_account, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._follow_account() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id, stripe_objects)
    VALUES (NEW.stripe_id, NEW.profile_table, NEW.user_id,
            coalesce((SELECT a.stripe_objects FROM onboarding.attachments a WHERE a.profile_table = NEW.profile_table),
                     'v1'))
    ON CONFLICT (account_id) DO NOTHING;
    RETURN NULL;
END $$;
-- sql/inbound.sql, src/maintenance/events.rs: an accounts_v2 table's connected Accounts are
-- followed as v1 accounts are: read on /v2/core/accounts, heard of through v2 thin events.
ALTER TABLE onboarding.connect_accounts
    ADD COLUMN stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2'));
ALTER TABLE onboarding.events_cursor ADD COLUMN v2_events_since bigint;
-- onboarding._v2_events_read, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._v2_events_read(since bigint, refresh_all boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c SET v2_events_since = greatest(c.v2_events_since, since)
     WHERE c.polling_pid = pg_backend_pid();
    IF refresh_all THEN
        UPDATE onboarding.connect_accounts a SET refresh_due = true
         WHERE a.stripe_objects = 'accounts_v2' AND NOT a.refresh_due;
    END IF;
END $$;
REVOKE ALL ON FUNCTION onboarding._v2_events_read(bigint, boolean) FROM PUBLIC;
-- An accounts_v2 profile's Account changed in the Dashboard goes through its table's change policy.
-- onboarding._v2_customers_changed, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._v2_customers_changed(accounts text[], keys text[]) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH changed AS (
        INSERT INTO onboarding.customer_changes AS c (customer_id, user_id, handled, refresh_due)
        SELECT DISTINCT t.stripe_id, t.user_id, true, true
          FROM unnest(accounts, keys) AS e(account, key)
          JOIN onboarding.stripe_ties t ON t.stripe_id = e.account AND t.object = 'customer'
          JOIN onboarding.attachments a ON a.profile_table = t.profile_table AND a.stripe_objects = 'accounts_v2'
         WHERE e.key IS NULL
            OR NOT EXISTS (SELECT FROM onboarding.jobs j
                            WHERE j.user_id = t.user_id AND j.idempotency_key = e.key)
        ON CONFLICT (customer_id) DO UPDATE SET refresh_due = true, updated_at = now()
        RETURNING 1)
    SELECT count(*)::integer FROM changed;
$$;
REVOKE ALL ON FUNCTION onboarding._v2_customers_changed(text[], text[]) FROM PUBLIC;
-- sql/audits.sql, sql/operations.sql, src/maintenance/snapshot.rs: the audits and reconcile
-- cover accounts_v2 tables, from v2 Accounts listed into the snapshot (object account_v2).
ALTER TABLE onboarding.stripe_objects DROP CONSTRAINT stripe_objects_object_check,
    ADD CONSTRAINT stripe_objects_object_check CHECK (object IN ('customer', 'account', 'account_v2'));
DROP FUNCTION onboarding._all_profiles();
-- onboarding._all_profiles, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._all_profiles()
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
REVOKE ALL ON FUNCTION onboarding._all_profiles() FROM PUBLIC;
-- onboarding._snapshot_add, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._snapshot_add(snapshot bigint, kind text, page jsonb) RETURNS void
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
-- onboarding.audit_orphans, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding.audit_orphans(refresh boolean DEFAULT true)
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
-- sql/failover.sql, src/maintenance/failover.rs: the sweep after a promotion covers v2 Accounts.
-- onboarding._has_accounts_v2_profile, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._has_accounts_v2_profile(uid text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments t WHERE t.stripe_objects = 'accounts_v2' LOOP
        BEGIN
            IF EXISTS (SELECT FROM onboarding._as_owner(a.profile_table, format('SELECT ''x'' FROM %s WHERE %I = $1::%s',
                                   a.profile_table, a.id_column, a.id_type), ARRAY[uid])) THEN
                RETURN true;
            END IF;
        EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
            CONTINUE;  -- not an id of this table
        END;
    END LOOP;
    RETURN false;
END $$;
REVOKE ALL ON FUNCTION onboarding._has_accounts_v2_profile(text) FROM PUBLIC;
-- onboarding._check_after_failover, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._check_after_failover(object_kind text, objects jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
    a onboarding.attachments;
    -- An accounts_v2 profile's Account is its customer: made by its customer job, in its customer column.
    create_kind text := CASE object_kind WHEN 'account' THEN 'create_connect_account' ELSE 'create_customer' END;
    delete_kind text := CASE object_kind WHEN 'account' THEN 'delete_connect_account' ELSE 'delete_customer' END;
    model text := CASE object_kind WHEN 'account_v2' THEN 'accounts_v2' ELSE 'v1' END;
    target_column name;
    linked text;
    found_in regclass;
    orphans integer := 0;
    reason text;
    job bigint;
BEGIN
    FOR o IN SELECT x.id, x.user_id FROM jsonb_to_recordset(objects) AS x(id text, user_id text)
              WHERE x.user_id IS NOT NULL LOOP
        CONTINUE WHEN EXISTS (SELECT FROM onboarding.jobs j
                               WHERE j.stripe_id = o.id AND j.kind = create_kind AND j.state = onboarding._succeeded());
        found_in := NULL; reason := NULL;
        FOR a IN SELECT * FROM onboarding.attachments t WHERE t.stripe_objects = model ORDER BY t.profile_table LOOP
            target_column := CASE object_kind WHEN 'account' THEN a.connect_account_column ELSE a.customer_column END;
            CONTINUE WHEN target_column IS NULL;
            BEGIN
                SELECT a.profile_table, r[1] INTO found_in, linked
                  FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s',
                           target_column, a.profile_table, a.id_column, a.id_type), ARRAY[o.user_id]) r;
            EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
                CONTINUE;  -- not an id of this table
            END;
            EXIT WHEN found_in IS NOT NULL;
        END LOOP;
        IF found_in IS NOT NULL AND linked = o.id THEN
            CONTINUE;
        ELSIF found_in IS NOT NULL AND linked IS NULL THEN
            -- An insert not yet promoted becomes a job under the key the old primary used: Stripe
            -- replays this object to it.
            CONTINUE WHEN create_kind = 'create_customer' AND EXISTS (
                SELECT FROM onboarding.intake i WHERE i.profile_table = found_in AND i.user_id = o.user_id);
            -- Else its job (open, or made now) adopts this object instead of creating another: a
            -- v1 job by looking it up first; an accounts_v2 job, whose look-up could not see a
            -- recent Account in the v2 list, by writing this very one back at its next claim.
            job := onboarding._enqueue(found_in, o.user_id, create_kind, 'failover sweep');
            IF model = 'accounts_v2' THEN
                UPDATE onboarding.jobs j SET object_to_link = o.id
                 WHERE j.id = job AND j.object_to_link IS NULL AND j.stripe_id IS NULL;
            ELSE
                UPDATE onboarding.jobs j SET look_up_first = true WHERE j.id = job AND NOT j.look_up_first;
            END IF;
            CONTINUE;
        ELSIF found_in IS NOT NULL THEN
            reason := format('created by the old primary; the profile has %s', linked);
        ELSE
            -- A v2 Account with a merchant configuration is listed by /v1/accounts too: one whose
            -- user has an accounts_v2 profile is the v2 pass's to judge, never deleted here.
            CONTINUE WHEN object_kind = 'account' AND onboarding._has_accounts_v2_profile(o.user_id);
            reason := 'created by the old primary for a profile this server never received';
            SELECT t.profile_table INTO found_in FROM onboarding.attachments t WHERE t.stripe_objects = model
             ORDER BY t.profile_table LIMIT 1;
            CONTINUE WHEN found_in IS NULL;  -- nothing attached: nothing to account it to
        END IF;
        -- Made by this extension (the old primary) for this user id, its tie lost with the old
        -- primary's jobs: tied here, so that its deletion may go ahead (sql/ties.sql). An object
        -- this server tied to another profile is not this sweep's to delete.
        CONTINUE WHEN NOT onboarding._tie(o.id, CASE object_kind WHEN 'account' THEN 'account' ELSE 'customer' END,
                                          found_in, o.user_id);
        job := onboarding._enqueue_for_customer(found_in, o.user_id, delete_kind, o.id, 'failover sweep: ' || reason);
        IF job IS NOT NULL THEN
            INSERT INTO onboarding.events (job_id, user_id, step, detail)
            VALUES (job, o.user_id, 'orphaned', jsonb_build_object('stripe_id', o.id, 'reason', reason));
            orphans := orphans + 1;
        END IF;
    END LOOP;
    RETURN orphans;
END $$;
-- The claim returns each job's table's model and options (_promote_and_claim, new in 0.4.0, is
-- written above with them).
DROP FUNCTION onboarding._claim_jobs(integer, interval, timestamptz[], bigint[], integer[]);
-- onboarding._claim_jobs, as sql/ defines it
CREATE OR REPLACE FUNCTION onboarding._claim_jobs(max_jobs integer, horizon interval, after_run_at timestamptz[],
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
REVOKE ALL ON FUNCTION onboarding._claim_jobs(integer, interval, timestamptz[], bigint[], integer[]) FROM PUBLIC;
