-- onboarding: after a promotion. A standby promoted after an asynchronous primary died lacks the
-- commits that never reached it; that primary may have called Stripe for some of them. The first
-- worker on the new timeline (src/maintenance/failover.rs) takes back the old primary's running
-- jobs, marks every job it may have attempted to look its object up before creating one, and then
-- sweeps Stripe's objects created since shortly before the last commit it received: each is
-- linked, adopted by its profile's job, or (no profile here, or the profile has another) deleted
-- by a compensation job. The table is onboarding.timelines (sql/schema.sql).

-- How far before the last replicated event the sweep starts: covers the clock difference between
-- this server and Stripe (object `created` times are Stripe's, in whole seconds) and calls the old
-- primary made between claiming and its last replicated commit.
CREATE FUNCTION onboarding._sweep_margin() RETURNS interval LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN interval '5 minutes';

-- Records the WAL timeline the calling worker runs on. Returns the time from which Stripe objects
-- must be swept when this is a timeline the workers have not run on after another (a promotion),
-- or when such a sweep was left unfinished; NULL otherwise (first start, or a restart).
CREATE FUNCTION onboarding._note_timeline(current_timeline integer) RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_seen onboarding.timelines;
    sweep_from timestamptz;
BEGIN
    -- One worker at a time, so the old primary's jobs are taken back once, before anyone claims.
    LOCK TABLE onboarding.timelines IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO last_seen FROM onboarding.timelines ORDER BY timeline DESC LIMIT 1;
    IF NOT FOUND THEN
        INSERT INTO onboarding.timelines (timeline, swept_at) VALUES (current_timeline, now());
        RETURN NULL;
    ELSIF last_seen.timeline >= current_timeline THEN
        RETURN CASE WHEN last_seen.swept_at IS NULL THEN last_seen.sweep_from END;
    END IF;
    -- Promoted: everything the old primary did after its last commit that reached us is unknown.
    sweep_from := coalesce((SELECT e.at FROM onboarding.events e ORDER BY e.id DESC LIMIT 1), now())
                  - onboarding._sweep_margin();
    INSERT INTO onboarding.timelines (timeline, promoted_from, sweep_from)
    VALUES (current_timeline, last_seen.timeline, sweep_from);
    WITH taken_back AS (
        UPDATE onboarding.jobs j
           SET state = onboarding._pending(), claimed_by = NULL, run_at = now(), look_up_first = true
         WHERE j.state = onboarding._running()
        RETURNING j.id, j.user_id)
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    SELECT t.id, t.user_id, 'requeued',
           jsonb_build_object('reason', 'claimed on timeline ' || last_seen.timeline || ' before this server was promoted',
                              'timeline', current_timeline)
      FROM taken_back t;
    -- Attempted there: its object may exist under a key Stripe has pruned; look before creating.
    UPDATE onboarding.jobs j SET look_up_first = true
     WHERE j.state = onboarding._pending() AND j.first_attempt_at IS NOT NULL AND NOT j.look_up_first;
    RAISE LOG 'onboarding: promoted from timeline % to %; sweeping Stripe objects created since %',
        last_seen.timeline, current_timeline, sweep_from;
    RETURN sweep_from;
END $$;

-- Whether an accounts_v2 table has a profile with this user id (read as each table's owner).
CREATE FUNCTION onboarding._has_accounts_v2_profile(uid text) RETURNS boolean
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

-- Checks Stripe objects (a page of customers, accounts or, object_kind account_v2, the Accounts v2
-- of accounts_v2 tables, created since the sweep began: jsonb array of {id, user_id}) against the
-- profiles. Returns how many were queued for deletion.
-- Per object, by its metadata user id:
-- - a succeeded job or the profile names it: nothing to do;
-- - the profile has no such object yet: an insert still in the intake will get it back under
--   the old primary's key; else the profile's creation job (made if none is open) looks it up
--   first and adopts it;
-- - the profile names another object, or no attached table has the profile: an orphan, deleted
--   by a compensation job (events: orphaned, then compensated).
CREATE FUNCTION onboarding._check_after_failover(object_kind text, objects jsonb) RETURNS integer
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

-- Records a finished sweep of the timeline's objects.
CREATE FUNCTION onboarding._failover_swept(swept_timeline integer, checked integer, orphans integer) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE onboarding.timelines
       SET swept_at = now(), objects_checked = checked, orphans_found = orphans
     WHERE timeline = swept_timeline;
$$;
