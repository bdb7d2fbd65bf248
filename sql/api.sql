-- onboarding: the application API (enqueue_customer, get_or_create_customer, enqueue_connect_account,
-- create_account_link, job_status, profile_status) and the helpers that check a user id and enqueue
-- work (_attachment, _profile, _enqueue, _enqueue_for_customer, ...), which the triggers, the worker's
-- transitions and the DBA operations use too.

------------------------------------------------------------------------------------------------
-- For applications: enqueue and status. SECURITY DEFINER (applications get no rights on the
-- queue tables); not executable by PUBLIC: grant EXECUTE to the roles that should call them.
------------------------------------------------------------------------------------------------

-- The attachment a user id refers to: the given table, or the only attached one.
CREATE FUNCTION onboarding._attachment(profile_table regclass) RETURNS onboarding.attachments
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    attached integer;
BEGIN
    IF profile_table IS NOT NULL THEN
        SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = _attachment.profile_table;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'onboarding: table % is not attached', profile_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('SELECT onboarding.attach(%L);', profile_table::text);
        END IF;
        RETURN a;
    END IF;
    SELECT count(*) INTO attached FROM onboarding.attachments;
    IF attached = 1 THEN
        SELECT * INTO a FROM onboarding.attachments;
        RETURN a;
    END IF;
    RAISE EXCEPTION 'onboarding: % tables are attached; say which one', attached
        USING ERRCODE = CASE WHEN attached = 0 THEN 'object_not_in_prerequisite_state' ELSE 'ambiguous_parameter' END,
              HINT = CASE WHEN attached = 0 THEN 'Attach the profile table first: SELECT onboarding.attach(''public.profiles'');'
                          ELSE 'Pass profile_table => ''schema.table''.' END;
END $$;

-- Refuses at once on a standby what needs a worker or writes the queue: workers run on the
-- primary only (read load balancers send SELECTs to standbys).
CREATE FUNCTION onboarding._require_primary() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'onboarding: read-only standby: run this on the primary'
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'The workers that call Stripe run on the primary only; send this call to a read-write connection.';
    END IF;
END $$;

-- Whether the calling role may read the profile `uid` of `a`'s table itself (its privileges, the
-- table's row-level security): 'visible', 'not found' or 'refused' (src/tables.rs). Every
-- application function answers only for profiles it may read. `uid` is cast to the id column's
-- type, which attach() allows only among built-in types: no code of the caller runs.
CREATE FUNCTION onboarding._caller_reads_profile(a onboarding.attachments, uid text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT onboarding._caller_can_read(a.profile_table,
               format('SELECT ''x'' FROM %s WHERE %I = $1::%s', a.profile_table, a.id_column, a.id_type), ARRAY[uid])
$$;

-- Checks a user id against the attached table: NULL, empty, malformed (for the id column's type)
-- and unknown ids are refused with their own SQLSTATE. Returns the profile's row as jsonb
-- (id, email, customer, connect account, whether this very transaction inserted it). Its id is
-- the id column's own text form: callers key jobs by it, never by the caller's spelling (' 42',
-- '+042' and '42' are one profile; so are a uuid in upper and lower case).
CREATE FUNCTION onboarding._profile(a onboarding.attachments, user_id text) RETURNS jsonb
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

-- The priority lane of new work (jobs.lane), claimed lowest first: a backfill or a reconcile never
-- queues ahead of a signup. Retries move to lane 1 (_finish_job).
CREATE FUNCTION onboarding._lane(job_kind text, source text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN source LIKE 'backfill%' OR source LIKE 'reconcile%' THEN 3
            WHEN job_kind IN ('update_customer_email', 'delete_customer', 'delete_connect_account') THEN 2
            ELSE 0 END;

-- Enqueues `kind` for a profile, or returns the open job that already does it.
CREATE FUNCTION onboarding._enqueue(tbl regclass, uid text, job_kind text, source text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job bigint;
    -- Fixed here, in the enqueueing transaction, and replicated with the job. An account's is
    -- derived from its customer's job, which a promoted standby may make again under the same key.
    key text := coalesce(CASE WHEN job_kind = 'create_connect_account' THEN onboarding._account_key(tbl, uid) END,
                         'onboarding-' || gen_random_uuid());
BEGIN
    LOOP
        -- COLLATE "default": a user id read through _as_owner from a statement built with format()
        -- over a `name` column comes with collation "C", which no index on jobs can serve (a
        -- backfill looked each profile up with a scan of the whole queue: quadratic).
        SELECT j.id INTO job FROM onboarding.jobs j
         WHERE j.profile_table = tbl AND j.kind = job_kind AND j.user_id = uid COLLATE "default"
           AND j.stripe_id IS NULL AND onboarding._is_open(j.state);
        IF FOUND THEN
            RETURN job;
        END IF;
        INSERT INTO onboarding.jobs (kind, profile_table, user_id, idempotency_key, lane, conditional)
        VALUES (job_kind, tbl, uid, key, onboarding._lane(job_kind, source), source = 'connect condition')
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

-- The idempotency key of a profile's Connect account: derived from the key of the profile's
-- latest customer job that is open or succeeded (NULL when there is none: then a random one).
-- When an old primary created the account and its record of it was lost in a failover, the new
-- primary makes the customer job again under the same key (_intake_key), then this same key.
CREATE FUNCTION onboarding._account_key(tbl regclass, uid text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'onboarding-' || md5('create_connect_account/' || c.idempotency_key)::uuid
      FROM onboarding.jobs c
     WHERE c.profile_table = tbl AND c.user_id = uid COLLATE "default" AND c.kind = 'create_customer'
       AND (onboarding._is_open(c.state) OR c.state = onboarding._succeeded())
     ORDER BY c.id DESC LIMIT 1;
$$;

-- Enqueues work on an existing customer: its deletion (compensation) or an email update. An open
-- job for the same customer and kind absorbs the new one.
CREATE FUNCTION onboarding._enqueue_for_customer(tbl regclass, uid text, job_kind text, customer text, reason text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_job bigint;
BEGIN
    INSERT INTO onboarding.jobs (kind, profile_table, user_id, stripe_id, lane)
    VALUES (job_kind, tbl, uid, customer, onboarding._lane(job_kind, reason))
    ON CONFLICT DO NOTHING
    RETURNING id INTO new_job;
    IF new_job IS NOT NULL THEN
        INSERT INTO onboarding.events (job_id, user_id, step, detail)
        VALUES (new_job, uid, 'enqueued', jsonb_build_object('source', reason, 'stripe_id', customer));
        PERFORM onboarding._wake_worker_after_commit();
    END IF;
    RETURN new_job;
END $$;

-- Enqueues the creation of the profile's Stripe customer (or returns the open job doing it).
-- The job runs after the calling transaction commits, like the trigger's.
CREATE FUNCTION onboarding.enqueue_customer(user_id text, profile_table regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments := onboarding._attachment(profile_table);
    profile jsonb := onboarding._profile(a, enqueue_customer.user_id);
BEGIN
    PERFORM onboarding._require_primary();
    RETURN onboarding._enqueue(a.profile_table, profile->>'id', 'create_customer', 'enqueue_customer');
END $$;

-- Returns the profile's Stripe customer, creating it first if needed (waiting up to wait_ms).
-- Joins the job the insert trigger queued, if it is still open: never a second customer.
CREATE FUNCTION onboarding.get_or_create_customer(user_id text, wait_ms integer DEFAULT 10000,
                                                  profile_table regclass DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments := onboarding._attachment(profile_table);
    profile jsonb := onboarding._profile(a, get_or_create_customer.user_id);
BEGIN
    IF profile->>'customer' IS NOT NULL THEN
        RETURN profile->>'customer';
    END IF;
    PERFORM onboarding._require_primary();
    IF (profile->>'inserted_by_this_transaction')::boolean THEN
        RAISE EXCEPTION 'onboarding: profile % was inserted by this transaction, which has not committed yet', user_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Stripe work happens only after COMMIT, and the insert has already queued it. Commit, then call '
                         'get_or_create_customer again, or read the customer column (or onboarding.profile_status()) later.';
    END IF;
    IF wait_ms IS NULL OR wait_ms < 0 THEN
        RAISE EXCEPTION 'onboarding: wait_ms must be 0 or more, got %', coalesce(wait_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN onboarding._request_customer(a.profile_table, profile->>'id', wait_ms);
END $$;

-- The customer column of a profile (NULL if the profile or the attachment is gone).
CREATE FUNCTION onboarding._customer_of(tbl regclass, uid text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    customer text;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = tbl;
    IF FOUND THEN
        SELECT r[1] INTO customer
          FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s',
                   a.customer_column, a.profile_table, a.id_column, a.id_type), ARRAY[uid]) r;
    END IF;
    RETURN customer;
END $$;

-- Enqueues the creation of the profile's Express Connect account (after its customer), whatever
-- the policy: an explicit request. Returns the job id (an open one is returned, not duplicated).
CREATE FUNCTION onboarding.enqueue_connect_account(user_id text, profile_table regclass DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments := onboarding._attachment(profile_table);
    profile jsonb := onboarding._profile(a, enqueue_connect_account.user_id);
BEGIN
    IF a.connect_account_column IS NULL THEN
        RAISE EXCEPTION 'onboarding: % has no Connect account column', a.profile_table
            USING ERRCODE = 'undefined_column', HINT = 'attach() it again with connect_account_column => ''...''.';
    END IF;
    PERFORM onboarding._require_primary();
    IF profile->>'customer' IS NULL THEN
        -- Accounts come after the customer: make sure one is on its way.
        PERFORM onboarding._enqueue(a.profile_table, profile->>'id', 'create_customer', 'enqueue_connect_account');
    END IF;
    RETURN onboarding._enqueue(a.profile_table, profile->>'id', 'create_connect_account', 'enqueue_connect_account');
END $$;

-- An account_onboarding link for the profile's Connect account, created first (after the
-- customer) if the table's Connect policy allows. Links are single-use and expire within minutes:
-- hand them to the user at once, never store them.
CREATE FUNCTION onboarding.create_account_link(user_id text, refresh_url text, return_url text,
                                               wait_ms integer DEFAULT 10000, profile_table regclass DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments := onboarding._attachment(profile_table);
    profile jsonb := onboarding._profile(a, create_account_link.user_id);
BEGIN
    IF a.connect_account_column IS NULL THEN
        RAISE EXCEPTION 'onboarding: % has no Connect account column', a.profile_table
            USING ERRCODE = 'undefined_column', HINT = 'attach() it again with connect_account_column => ''...''.';
    END IF;
    IF refresh_url IS NULL OR return_url IS NULL OR refresh_url !~ '^https?://' OR return_url !~ '^https?://'
       OR length(refresh_url) > 500 OR length(return_url) > 500 THEN
        RAISE EXCEPTION 'onboarding: refresh_url and return_url must be http(s) URLs of at most 500 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (profile->>'inserted_by_this_transaction')::boolean THEN
        RAISE EXCEPTION 'onboarding: profile % was inserted by this transaction, which has not committed yet', user_id
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Stripe work happens only after COMMIT.';
    END IF;
    IF wait_ms IS NULL OR wait_ms < 0 THEN
        RAISE EXCEPTION 'onboarding: wait_ms must be 0 or more, got %', coalesce(wait_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN onboarding._request_account_link(a.profile_table, profile->>'id', refresh_url, return_url, wait_ms);
END $$;

-- The Connect account column of a profile (NULL if none, or the profile or attachment is gone).
CREATE FUNCTION onboarding._connect_account_of(tbl regclass, uid text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    account text;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = tbl;
    IF FOUND AND a.connect_account_column IS NOT NULL THEN
        SELECT r[1] INTO account
          FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s',
                   a.connect_account_column, a.profile_table, a.id_column, a.id_type), ARRAY[uid]) r;
    END IF;
    RETURN account;
END $$;

-- For create_account_link: the profile's account if it has one (and this extension made it for the
-- profile); else, if the policy allows, the job that creates it (and the customer's before it);
-- else why not.
CREATE FUNCTION onboarding._account_or_enqueue(tbl regclass, uid text,
                                               OUT account text, OUT job bigint, OUT refusal text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    due boolean;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = tbl;
    account := onboarding._connect_account_of(tbl, uid);
    IF account IS NOT NULL AND NOT onboarding._tied(account, tbl, uid) THEN
        -- A link opens the account's onboarding to whoever holds it: only for the profile's own.
        PERFORM onboarding._refuse_untied(tbl, uid, account, 'account link');
        refusal := format('the profile''s Connect account %s was not made for it by this extension', left(account, 60));
        account := NULL;
        RETURN;
    ELSIF account IS NOT NULL THEN
        RETURN;
    END IF;
    due := onboarding._connect_due(a, uid);
    IF NOT due THEN
        refusal := format('the user has no Connect account, and the Connect policy of %s (%s) does not create one for them',
                          tbl, a.connect_policy || coalesce(': ' || a.connect_condition, ''));
        RETURN;
    END IF;
    IF onboarding._customer_of(tbl, uid) IS NULL THEN
        PERFORM onboarding._enqueue(tbl, uid, 'create_customer', 'create_account_link');
    END IF;
    job := onboarding._enqueue(tbl, uid, 'create_connect_account', 'create_account_link');
END $$;

CREATE FUNCTION onboarding.job_status(job_id bigint)
RETURNS TABLE (id bigint, kind text, user_id text, state text, attempts integer, stripe_id text,
               last_error text, run_at timestamptz, created_at timestamptz, finished_at timestamptz,
               duration interval)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j onboarding.jobs;
BEGIN
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'onboarding.job_status: job_id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO j FROM onboarding.jobs x WHERE x.id = job_status.job_id;
    -- Jobs of profiles the caller may read only; whether another job exists is not said, except to
    -- roles that may read the queue anyway.
    IF NOT FOUND OR (SELECT onboarding._caller_reads_profile(a, j.user_id) FROM onboarding.attachments a
                      WHERE a.profile_table = j.profile_table) IS DISTINCT FROM 'visible' THEN
        IF NOT FOUND AND has_table_privilege(onboarding._calling_role(), 'onboarding.jobs', 'SELECT') THEN
            RAISE EXCEPTION 'onboarding.job_status: no job %', job_id USING ERRCODE = 'no_data_found';
        END IF;
        RAISE EXCEPTION 'onboarding.job_status: no job % of a profile this role may read', job_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The calling role must be able to SELECT the job''s profile.';
    END IF;
    RETURN QUERY
        SELECT j.id, j.kind, j.user_id, j.state, j.attempts, j.stripe_id, j.last_error, j.run_at,
               j.created_at, j.finished_at, coalesce(j.finished_at, now()) - j.created_at;
END $$;

-- The profile's Stripe IDs and its latest job of each kind.
CREATE FUNCTION onboarding.profile_status(user_id text, profile_table regclass DEFAULT NULL)
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
                 WHERE x.profile_table = a.profile_table AND x.user_id = profile->>'id'
                UNION SELECT 'create_customer') k
          LEFT JOIN LATERAL (
                -- An insert the worker has not promoted to a job yet: pending, without a job id.
                SELECT NULL::bigint AS id, onboarding._pending() AS state, 0 AS attempts, NULL::text AS last_error,
                       i.enqueued_at AS created_at, NULL::timestamptz AS finished_at, 0 AS rank
                  FROM onboarding.intake i
                 WHERE k.kind = 'create_customer' AND i.profile_table = a.profile_table
                   AND i.user_id = profile->>'id'
                UNION ALL
                SELECT x.id, x.state, x.attempts, x.last_error, x.created_at, x.finished_at, 1
                  FROM onboarding.jobs x
                 WHERE x.profile_table = a.profile_table AND x.user_id = profile->>'id' AND x.kind = k.kind
                 ORDER BY rank, id DESC LIMIT 1) j ON true
         ORDER BY k.kind;
END $$;
