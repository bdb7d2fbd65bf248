-- onboarding 0.2.0 -> 0.3.0, run by ALTER EXTENSION onboarding UPDATE (after the 0.3.0 package is
-- installed and PostgreSQL restarted). Keeps every job, event, intake row and attachment.
-- Until this commits, the 0.3.0 workers wait (src/release.rs); its commit wakes them.
-- tests/upgrade.rs checks that this gives the schema of a fresh 0.3.0 install.
-- 0.3.0 is one release made in several parts (the sections below): a function that more than one
-- part changed is stated once, in its final form, where it first appears.
\echo Use "ALTER EXTENSION onboarding UPDATE TO '0.3.0'" to load this file. \quit

------------------------------------------------------------------------------------------------
-- 1. The one way into application tables: statements run as the table's owner in a
--    security-restricted operation (src/tables.rs); the calling role's own right to read a
--    profile; Connect conditions checked to be one expression (src/condition.rs).
------------------------------------------------------------------------------------------------
CREATE FUNCTION onboarding."_as_owner"(
	"table" oid, /* pg_sys :: Oid */
	"statement" TEXT, /* & str */
	"params" TEXT[] DEFAULT '{}' /* Vec < Option < String > > */
) RETURNS SETOF TEXT[] /* Vec < Option < String > > */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'as_owner_wrapper';

CREATE FUNCTION onboarding."_calling_role"() RETURNS oid /* pg_sys :: Oid */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'calling_role_wrapper';

CREATE FUNCTION onboarding."_caller_can_read"(
	"table" oid, /* pg_sys :: Oid */
	"statement" TEXT, /* & str */
	"params" TEXT[] DEFAULT '{}' /* Vec < Option < String > > */
) RETURNS TEXT /* & '_ str */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'caller_can_read_wrapper';

CREATE FUNCTION onboarding."_check_connect_condition"(
	"condition" TEXT /* & str */
) RETURNS void
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_connect_condition_wrapper';

CREATE FUNCTION onboarding."_quoted_prefix"(
	"value" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'quoted_prefix_wrapper';

-- The extension's triggers run with its owner's rights (they write the queue), so they read only
-- the columns attach() named, and only while those still have the types attach() allows: the text
-- form of a uuid, text, varchar or integer runs no code of the table's owner (to_jsonb(NEW) would
-- run the owner's casts of every column). A column whose type the owner changed since is refused.
CREATE FUNCTION onboarding._check_profile_columns(tbl regclass, columns name[]) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed text;
BEGIN
    SELECT string_agg(format('%I (%s)', c.name, coalesce(format_type(a.atttypid, NULL), 'dropped')), ', ')
      INTO changed
      FROM unnest(columns) AS c(name)
      LEFT JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped
     WHERE c.name <> ''
       AND (a.atttypid IS NULL
            OR a.atttypid NOT IN ('uuid'::regtype, 'text'::regtype, 'character varying'::regtype, 'bigint'::regtype,
                                  'integer'::regtype, coalesce(to_regtype('citext'), 'text'::regtype)));
    IF changed IS NOT NULL THEN
        RAISE EXCEPTION 'onboarding: columns of % changed since attach(): %', tbl, changed
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Give them back a type attach() accepts (uuid, text, varchar, bigint, integer), or detach() the table.';
    END IF;
END $$;

-- The named columns of a profile row, as text (after the check above).
CREATE FUNCTION onboarding._profile_columns(tbl regclass, profile anyelement, columns name[]) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    picked text[];
BEGIN
    PERFORM onboarding._check_profile_columns(tbl, columns);
    EXECUTE 'SELECT ARRAY[' || (SELECT string_agg(format('($1).%I::text', c), ', ') FROM unnest(columns) c) || ']'
       INTO picked USING profile;
    RETURN picked;
END $$;

-- Whether the Connect policy of `a` wants an account for the profile `uid`. The condition is
-- evaluated on the profile's row as the table's owner (src/tables.rs), never with this extension's
-- rights, within onboarding.connect_condition_timeout; set_connect_policy() has checked that it is
-- one expression (src/condition.rs). Called by the worker only (claims, account-link requests).
CREATE FUNCTION onboarding._connect_due(a onboarding.attachments, uid text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner_timeout text := current_setting('onboarding.owner_statement_timeout');
    due boolean;
BEGIN
    IF a.connect_policy = 'always' THEN
        RETURN true;
    ELSIF a.connect_policy = 'when' THEN
        PERFORM set_config('onboarding.owner_statement_timeout', current_setting('onboarding.connect_condition_timeout'), true);
        due := coalesce((SELECT r[1]::boolean
                           FROM onboarding._as_owner(a.profile_table, onboarding._connect_condition_query(a, '$1'),
                                                     ARRAY[uid]) r), false);
        PERFORM set_config('onboarding.owner_statement_timeout', owner_timeout, true);
        RETURN due;
    END IF;
    RETURN false;
END $$;

-- The query that evaluates a's condition (as text) for the profile whose id is `id_expression`
-- ('$1', or 'NULL' to plan it without a row). Run only through onboarding._as_owner.
CREATE FUNCTION onboarding._connect_condition_query(a onboarding.attachments, id_expression text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format(E'SELECT (%s\n)::boolean::text FROM %s AS p WHERE p.%I = %s::%s', a.connect_condition,
                  a.profile_table, a.id_column, id_expression, a.id_type);
$$;

------------------------------------------------------------------------------------------------
-- 2. Every function that read or wrote an application table (or ran a Connect condition) with
--    this extension's rights now goes through onboarding._as_owner; the triggers read only the
--    named columns (no to_jsonb(NEW)); the application functions act only on profiles the caller
--    may read.
------------------------------------------------------------------------------------------------

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
-- (id, email, customer, connect account, whether this very transaction inserted it).
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
        -- Then read as the table's owner (src/tables.rs).
        SELECT jsonb_build_object('id', r[1], 'email', r[2], 'customer', r[3], 'connect_account', r[4],
                                  'inserted_by_this_transaction', onboarding._inserted_by_this_transaction(r[5]::bigint))
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

-- The customer column of a profile (NULL if the profile or the attachment is gone).
CREATE OR REPLACE FUNCTION onboarding._customer_of(tbl regclass, uid text) RETURNS text
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

-- The Connect account column of a profile (NULL if none, or the profile or attachment is gone).
CREATE OR REPLACE FUNCTION onboarding._connect_account_of(tbl regclass, uid text) RETURNS text
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

-- For create_account_link: the profile's account if it has one; else, if the policy allows, the job
-- that creates it (and the customer's before it); else why not.
CREATE OR REPLACE FUNCTION onboarding._account_or_enqueue(tbl regclass, uid text,
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

CREATE OR REPLACE FUNCTION onboarding.job_status(job_id bigint)
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

-- Row-level AFTER UPDATE OF <email> trigger (only rows whose email changed): the customer follows.
-- TG_ARGV: id column, customer column, the attached table's oid (a partitioned table's triggers
-- fire on its partitions; triggers made before 0.3.0 lack it and sit on the attached table itself).
CREATE OR REPLACE FUNCTION onboarding._enqueue_email_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    picked text[] := onboarding._profile_columns(TG_RELID, NEW, ARRAY[TG_ARGV[0], TG_ARGV[1]]::name[]);
    attached regclass := coalesce(TG_ARGV[2]::oid, TG_RELID);
BEGIN
    IF picked[2] IS NOT NULL AND onboarding._sync_email_enabled() THEN
        IF onboarding._tied(picked[2], attached, picked[1]) THEN
            PERFORM onboarding._enqueue_for_customer(attached, picked[1], 'update_customer_email', picked[2],
                                                     'email changed');
        ELSE
            PERFORM onboarding._refuse_untied(attached, picked[1], picked[2], 'email sync');
        END IF;
    END IF;
    RETURN NULL;
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
    PERFORM onboarding._check_profile_columns(TG_RELID, ARRAY[TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]]::name[]);
    -- Once for the customer column, once for the Connect account column (if the table has one).
    FOR i IN 1..2 LOOP
        CONTINUE WHEN coalesce(TG_ARGV[i], '') = '';
        EXECUTE format($sql$
            SELECT count(onboarding._enqueue_for_customer(%1$s::oid, d.%2$I::text, %5$L, d.%3$I, 'profile deleted'))
              FROM onboarding_deleted_profiles d
             WHERE d.%3$I IS NOT NULL
               AND onboarding._tied(d.%3$I, %1$s::oid, d.%2$I::text)
               AND NOT EXISTS (SELECT FROM onboarding._as_owner(%1$s::oid,
                                   pg_catalog.format('SELECT ''x'' FROM %%s other WHERE other.%%I = $1 LIMIT 1', %4$L, %3$L),
                                   ARRAY[d.%3$I::text])) $sql$,
            TG_RELID, TG_ARGV[0], TG_ARGV[i], TG_RELID::regclass,
            CASE i WHEN 1 THEN 'delete_customer' ELSE 'delete_connect_account' END);
    END LOOP;
    RETURN NULL;
END $$;

-- Row-level AFTER UPDATE trigger on rows with a customer and no Connect account, for updates of
-- the customer column (which covers the worker's write-back) or of the columns the condition
-- reads: enqueues the account. Under a 'when' policy the job is conditional: the worker checks
-- the condition when it claims it, so the application's UPDATE never waits for a condition.
-- TG_ARGV: the attached table's oid (as for _enqueue_email_update).
CREATE OR REPLACE FUNCTION onboarding._enqueue_connect_if_due() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
    uid text;
BEGIN
    SELECT * INTO a FROM onboarding.attachments WHERE profile_table = coalesce(TG_ARGV[0]::oid, TG_RELID);
    IF FOUND AND a.connect_policy <> 'never' THEN
        uid := (onboarding._profile_columns(TG_RELID, NEW, ARRAY[a.id_column]))[1];
        PERFORM onboarding._enqueue(a.profile_table, uid, 'create_connect_account',
                                    CASE a.connect_policy WHEN 'when' THEN 'connect condition' ELSE 'connect policy' END);
    END IF;
    RETURN NULL;
END $$;

-- Sets when Connect accounts are created for a table's profiles: 'never', 'always', or 'when' with a
-- condition over the profile row, e.g. set_connect_policy('public.profiles', 'when', 'role = ''provider''').
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
            USING ERRCODE = 'undefined_column', HINT = 'attach() it again with connect_account_column => ''...''.';
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

-- Every attached profile with its Stripe IDs.
CREATE OR REPLACE FUNCTION onboarding._all_profiles()
RETURNS TABLE (profile_table regclass, user_id text, customer text, account text, email text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments LOOP
        RETURN QUERY
            SELECT a.profile_table, r[1], r[2], r[3], r[4]
              FROM onboarding._as_owner(a.profile_table,
                       format('SELECT t.%1$I::text, t.%2$I::text, %3$s, t.%4$I::text FROM %5$s t',
                              a.id_column, a.customer_column,
                              coalesce('t.' || quote_ident(a.connect_account_column) || '::text', 'NULL::text'), a.email_column,
                              a.profile_table)) r;
    END LOOP;
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
    FOR r IN SELECT * FROM onboarding.audit_orphans(false) o WHERE NOT o.stripe_id = ANY (relinked) LOOP
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

-- Claims up to max_jobs due jobs (committed by the caller before any Stripe call) and reads each
-- one's profile. A job whose table is gone, detached or unreadable is finished here, not returned.
-- look_up_first: Stripe may have pruned the idempotency key (first attempt older than `horizon`)
-- or refused it (idempotency_error), or an old primary attempted the job (jobs.look_up_first):
-- look the object up before creating anything.
-- (Dropped first: its result gained a column, lane.)
DROP FUNCTION onboarding._claim_jobs(integer, interval);
CREATE FUNCTION onboarding._claim_jobs(max_jobs integer, horizon interval, after_run_at timestamptz[],
                                       after_id bigint[], reserved integer[])
RETURNS TABLE (job_id bigint, kind text, user_id text, idempotency_key text, attempts integer,
               stripe_id text, request_params jsonb, look_up_first boolean,
               profile_found boolean, email text, customer_id text, connect_account_id text, lane smallint,
               run_at timestamptz, finished boolean)
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
            look_up_first := job.look_up_first OR job.first_attempt_at < now() - horizon
                             OR job.last_error_detail->>'type' = 'idempotency_error';
            BEGIN
                -- As the table's owner (src/tables.rs), like every statement on an application table.
                SELECT r[1], r[2], r[3] INTO email, customer_id, connect_account_id
                  FROM onboarding._as_owner(a.profile_table,
                           format('SELECT %I::text, %I::text, %s FROM %s WHERE %I = $1::%s',
                                  a.email_column, a.customer_column,
                                  coalesce(quote_ident(a.connect_account_column) || '::text', 'NULL::text'),
                                  a.profile_table, a.id_column, a.id_type),
                           ARRAY[job.user_id]) r;
                profile_found := FOUND;
            EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
                -- A user id that cannot be an id of this table (say, an orphan's metadata): no profile.
                profile_found := false; email := NULL; customer_id := NULL; connect_account_id := NULL;
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

-- Replaced by _connect_due(attachments, text), which evaluates the condition as the table's owner.
DROP FUNCTION onboarding._connect_due(onboarding.attachments, anyelement);

------------------------------------------------------------------------------------------------
-- 3. Privileges of the new functions (sql/privileges.sql: nothing for PUBLIC).
------------------------------------------------------------------------------------------------
REVOKE EXECUTE ON FUNCTION onboarding._as_owner(oid, text, text[]), onboarding._calling_role(),
    onboarding._caller_can_read(oid, text, text[]), onboarding._caller_reads_profile(onboarding.attachments, text),
    onboarding._check_connect_condition(text),
    onboarding._quoted_prefix(text), onboarding._check_profile_columns(regclass, name[]),
    onboarding._profile_columns(regclass, anyelement, name[]), onboarding._connect_due(onboarding.attachments, text),
    onboarding._connect_condition_query(onboarding.attachments, text),
    onboarding._claim_jobs(integer, interval, timestamptz[], bigint[], integer[])
    FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 4. Exactly once across replicas and failover, and for every spelling of a profile: idempotency
--    keys fixed in the inserting transaction (_intake_key) and for accounts derived from them
--    (_account_key); claimers named by pid and start time; the sweep after a promotion
--    (sql/failover.sql); user ids in the id column's own form; partitioned tables; dropped tables.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.jobs
    ADD COLUMN look_up_first boolean NOT NULL DEFAULT false,
    ADD COLUMN claimer_started_at timestamptz;

CREATE TABLE onboarding.timelines (
    timeline integer PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now(),
    promoted_from integer,
    sweep_from timestamptz,
    swept_at timestamptz,
    objects_checked integer NOT NULL DEFAULT 0,
    orphans_found integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE onboarding.timelines IS
    'WAL timelines the workers ran on; after a promotion, the sweep for objects the old primary left behind';

CREATE FUNCTION onboarding."_backend_started_at"() RETURNS timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backend_started_at_wrapper';

CREATE FUNCTION onboarding."_standby_wait"() RETURNS TABLE (
	"calls" bigint,  /* i64 */
	"waiting_seconds" double precision  /* Option < f64 > */
)
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'standby_wait_wrapper';

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

-- Tables attach() refuses besides views: a partition (its partitioned table is attached instead,
-- which covers every partition, present and future; attaching both would provision twice) and
-- the tables of an extension, this one's above all (its insert trigger on onboarding.intake would
-- fail every profile insert).
CREATE FUNCTION onboarding._check_attachable(tbl regclass) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parent regclass;
BEGIN
    IF tbl::oid IN (SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e')
       OR (SELECT relnamespace FROM pg_class WHERE oid = tbl) = 'onboarding'::regnamespace THEN
        RAISE EXCEPTION 'onboarding.attach: % belongs to an extension', tbl
            USING ERRCODE = 'wrong_object_type', HINT = 'Attach the application''s own profile table.';
    END IF;
    SELECT i.inhparent INTO parent FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhrelid = tbl AND c.relispartition;
    IF FOUND THEN
        RAISE EXCEPTION 'onboarding.attach: % is a partition of %', tbl, parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = format('Attach the partitioned table (SELECT onboarding.attach(%L);): that covers all of its '
                                'partitions, present and future.', pg_partition_root(tbl)::text);
    END IF;
    IF EXISTS (SELECT FROM pg_partition_tree(tbl) p JOIN onboarding.attachments a ON a.profile_table = p.relid
                WHERE p.relid <> tbl) THEN
        RAISE EXCEPTION 'onboarding.attach: a partition of % is attached already', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'detach() the partition first, then attach the partitioned table.';
    END IF;
END $$;

-- The insert, delete and email triggers of an attachment (the Connect trigger is set_connect_policy's).
-- On a partitioned table PostgreSQL clones the row-level ones onto every partition, present and
-- future; they name the attached table (the last argument) for the jobs.
CREATE FUNCTION onboarding._create_triggers(a onboarding.attachments) RETURNS void
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
        a.profile_table, a.id_column, a.customer_column, coalesce(a.connect_account_column, ''));
    EXECUTE format($sql$
        CREATE TRIGGER onboarding_sync_email AFTER UPDATE OF %2$I ON %1$s
        FOR EACH ROW WHEN (OLD.%2$I IS DISTINCT FROM NEW.%2$I)
        EXECUTE FUNCTION onboarding._enqueue_email_update(%3$L, %4$L, %5$L)$sql$,
        a.profile_table, a.email_column, a.id_column, a.customer_column, a.profile_table::oid);
END $$;

-- DROP TABLE (or DROP SCHEMA ... CASCADE, DROP OWNED) of an attached table takes its attachment,
-- intake rows and waiting jobs with it (cancelled, with the reason); a job running at that moment
-- finds no attachment when it records its result. It runs as the dropping role, hence SECURITY
-- DEFINER to write the queue; it runs nothing of that role's, and never fails the DROP.
CREATE FUNCTION onboarding._forget_dropped_tables() RETURNS event_trigger
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
        RAISE NOTICE 'onboarding: %: detached, its waiting jobs cancelled', reason;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'onboarding: could not detach a dropped table: %', SQLERRM
        USING HINT = 'SELECT onboarding.detach(oid) for it by hand.';
END $$;

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

-- Checks Stripe objects (a page of customers or accounts created since the sweep began: jsonb
-- array of {id, user_id}) against the profiles. Returns how many were queued for deletion.
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
    create_kind text := CASE object_kind WHEN 'customer' THEN 'create_customer' ELSE 'create_connect_account' END;
    delete_kind text := CASE object_kind WHEN 'customer' THEN 'delete_customer' ELSE 'delete_connect_account' END;
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
        FOR a IN SELECT * FROM onboarding.attachments t ORDER BY t.profile_table LOOP
            target_column := CASE object_kind WHEN 'customer' THEN a.customer_column ELSE a.connect_account_column END;
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
            -- Else its job (open, or made now) adopts this object instead of creating another.
            job := onboarding._enqueue(found_in, o.user_id, create_kind, 'failover sweep');
            UPDATE onboarding.jobs j SET look_up_first = true WHERE j.id = job AND NOT j.look_up_first;
            CONTINUE;
        ELSIF found_in IS NOT NULL THEN
            reason := format('created by the old primary; the profile has %s', linked);
        ELSE
            reason := 'created by the old primary for a profile this server never received';
            SELECT t.profile_table INTO found_in FROM onboarding.attachments t ORDER BY t.profile_table LIMIT 1;
            CONTINUE WHEN found_in IS NULL;  -- nothing attached: nothing to account it to
        END IF;
        -- Made by this extension (the old primary) for this user id, its tie lost with the old
        -- primary's jobs: tied here, so that its deletion may go ahead (sql/ties.sql). An object
        -- this server tied to another profile is not this sweep's to delete.
        CONTINUE WHEN NOT onboarding._tie(o.id, object_kind, found_in, o.user_id);
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

-- The idempotency key of an inserted profile's customer: a digest of what the inserting
-- transaction wrote (table, user id, its transaction id and start time), fixed and replicated with
-- the profile, unique without storing anything more on the application's path. The digest keeps
-- the user id out of Stripe's logs (keys must carry no personal data).
CREATE FUNCTION onboarding._intake_key(tbl regclass, uid text, inserted_by xid, enqueued_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN 'onboarding-' || pg_catalog.md5(pg_catalog.concat_ws('/', tbl::oid, uid, inserted_by,
                                                            pg_catalog.date_part('epoch', enqueued_at)))::uuid;

-- Enqueues `kind` for a profile, or returns the open job that already does it.
CREATE OR REPLACE FUNCTION onboarding._enqueue(tbl regclass, uid text, job_kind text, source text) RETURNS bigint
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

-- Enqueues the creation of the profile's Stripe customer (or returns the open job doing it).
-- The job runs after the calling transaction commits, like the trigger's.
CREATE OR REPLACE FUNCTION onboarding.enqueue_customer(user_id text, profile_table regclass DEFAULT NULL) RETURNS bigint
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
CREATE OR REPLACE FUNCTION onboarding.get_or_create_customer(user_id text, wait_ms integer DEFAULT 10000,
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

-- Enqueues the creation of the profile's Express Connect account (after its customer), whatever
-- the policy: an explicit request. Returns the job id (an open one is returned, not duplicated).
CREATE OR REPLACE FUNCTION onboarding.enqueue_connect_account(user_id text, profile_table regclass DEFAULT NULL) RETURNS bigint
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
CREATE OR REPLACE FUNCTION onboarding.create_account_link(user_id text, refresh_url text, return_url text,
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



-- Puts back jobs claimed by a worker process that no longer exists (crash, kill, restart, or
-- another server's before a failover), or running for longer than the lease (a worker alive but
-- stuck; its late result is then refused by _finish_job). A claimer is alive only if a process
-- with its pid *and* start time runs here: pids are reused, and after a promotion a live pid may
-- be anything. Attempts were counted at claim time, so a job that keeps killing its worker runs
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

-- Moves up to max_rows committed intake rows into jobs, set-based: one create_customer job per
-- profile (joining an open one if any), run and created at the insert's time, and its 'enqueued'
-- event carrying the insert's commit time (the event's own xmin is the worker's transaction; see
-- _queued_commit_time). Concurrent workers skip each other's rows. Returns the rows taken.
-- The job's idempotency key comes from the intake row itself (_intake_key): a standby promoted
-- after this server called Stripe promotes the replicated row again under the same key.
CREATE OR REPLACE FUNCTION onboarding._promote_intake(max_rows integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken_count bigint;
BEGIN
    WITH taken AS (
        DELETE FROM onboarding.intake i
         WHERE i.ctid = ANY (ARRAY(SELECT x.ctid FROM onboarding.intake x LIMIT max_rows FOR UPDATE SKIP LOCKED))
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

CREATE EVENT TRIGGER onboarding_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION onboarding._forget_dropped_tables();

-- Attachments of tables dropped while 0.2.0 had no event trigger: gone with their intake rows.
DELETE FROM onboarding.intake i WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = i.profile_table);
DELETE FROM onboarding.attachments a WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.profile_table);

-- The profile tables' triggers again, now naming the attached table (which partitions need).
SELECT onboarding._create_triggers(a) FROM onboarding.attachments a;
-- (The Connect triggers: section 7.)

REVOKE EXECUTE ON FUNCTION onboarding._backend_started_at(), onboarding._standby_wait(), onboarding._require_primary(),
    onboarding._account_key(regclass, text), onboarding._check_attachable(regclass),
    onboarding._create_triggers(onboarding.attachments), onboarding._forget_dropped_tables(),
    onboarding._sweep_margin(), onboarding._note_timeline(integer), onboarding._check_after_failover(text, jsonb),
    onboarding._failover_swept(integer, integer, integer), onboarding._intake_key(regclass, text, xid, timestamptz)
    FROM PUBLIC;
REVOKE ALL ON onboarding.timelines FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 5. Nothing waits behind a locked profile row: write-backs skip rows other transactions hold;
--    such a job keeps its object (jobs.object_to_link) and writes it back at a later claim.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.jobs ADD COLUMN object_to_link text;

------------------------------------------------------------------------------------------------
-- 6. Priority lanes: jobs are claimed by lane (0 signups and requests, 1 retries, 2 email syncs
--    and compensation, 3 backfill and reconcile), then by due time.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.jobs ADD COLUMN lane smallint NOT NULL DEFAULT 0;
DROP INDEX onboarding.jobs_due;
CREATE INDEX jobs_due ON onboarding.jobs (lane, run_at, id) WHERE state = 'pending';

-- The priority lane of new work (jobs.lane), claimed lowest first: a backfill or a reconcile never
-- queues ahead of a signup. Retries move to lane 1 (_finish_job).
CREATE FUNCTION onboarding._lane(job_kind text, source text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN source LIKE 'backfill%' OR source LIKE 'reconcile%' THEN 3
            WHEN job_kind IN ('update_customer_email', 'delete_customer', 'delete_connect_account') THEN 2
            ELSE 0 END;

-- Enqueues work on an existing customer: its deletion (compensation) or an email update. An open
-- job for the same customer and kind absorbs the new one.
CREATE OR REPLACE FUNCTION onboarding._enqueue_for_customer(tbl regclass, uid text, job_kind text, customer text, reason text)
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

-- Open jobs get the lane they would have had: by what enqueued them, retries behind signups.
UPDATE onboarding.jobs j
   SET lane = greatest(onboarding._lane(j.kind, coalesce((SELECT e.detail->>'source' FROM onboarding.events e
                                                           WHERE e.job_id = j.id AND e.step = 'enqueued'
                                                           ORDER BY e.id LIMIT 1), '')),
                       CASE WHEN j.attempts > 0 THEN 1 ELSE 0 END)
 WHERE onboarding._is_open(j.state);
REVOKE EXECUTE ON FUNCTION onboarding._lane(text, text) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 7. A slow Connect condition delays only its own jobs: the application's UPDATE no longer runs
--    it; the worker checks it when it claims a conditional account job, within
--    onboarding.connect_condition_timeout; the Connect trigger fires on the columns it reads.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.jobs ADD COLUMN conditional boolean NOT NULL DEFAULT false;

CREATE FUNCTION onboarding."_condition_columns"(
	"condition" TEXT /* & str */
) RETURNS TEXT[] /* :: std :: option :: Option < Vec < String > > */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'condition_columns_wrapper';

-- The UPDATE OF list of the Connect trigger: the customer column and the columns the condition
-- reads ('' when the walk of the condition cannot tell, or names something that is not a column:
-- then every update of a row without an account fires it).
CREATE FUNCTION onboarding._connect_trigger_columns(a onboarding.attachments) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    read_columns text[] := CASE WHEN a.connect_policy = 'when' THEN onboarding._condition_columns(a.connect_condition)
                                ELSE '{}' END;
BEGIN
    IF read_columns IS NULL OR EXISTS (
           SELECT FROM unnest(read_columns) c
            WHERE NOT EXISTS (SELECT FROM pg_attribute t WHERE t.attrelid = a.profile_table AND t.attname = c
                                 AND t.attnum > 0 AND NOT t.attisdropped)) THEN
        RETURN '';
    END IF;
    RETURN 'OF ' || (SELECT string_agg(quote_ident(c), ', ' ORDER BY c)
                       FROM (SELECT DISTINCT c FROM unnest(read_columns || a.customer_column::text) c) d);
END $$;

-- The Connect triggers again, on the columns their conditions read.
DO $$
DECLARE
    a onboarding.attachments;
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments t WHERE t.connect_policy <> 'never' LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS onboarding_connect ON %s', a.profile_table);
        EXECUTE format($sql$
            CREATE TRIGGER onboarding_connect AFTER UPDATE %5$s ON %1$s
            FOR EACH ROW WHEN (NEW.%2$I IS NULL AND NEW.%3$I IS NOT NULL)
            EXECUTE FUNCTION onboarding._enqueue_connect_if_due(%4$L)$sql$,
            a.profile_table, a.connect_account_column, a.customer_column, a.profile_table::oid,
            onboarding._connect_trigger_columns(a));
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION onboarding._condition_columns(text), onboarding._connect_trigger_columns(onboarding.attachments)
    FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 8. Nothing waits behind a locked table either: the worker's statements on application tables
--    wait at most 50 ms for a lock (src/tables.rs); a job whose table is held waits for a later
--    claim, keeping the object it made (_postpone).
------------------------------------------------------------------------------------------------
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

REVOKE EXECUTE ON FUNCTION onboarding._postpone(bigint, text, text) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 9. The queue does not slow down with its own history or under a held snapshot: claims start in
--    each lane after the last key claimed there (core/src/claim_cursor.rs; _claim_jobs above),
--    inserted profiles' jobs are due from their promotion, a move back to pending tells the
--    workers to look from the front, and the write-back's batch is read by primary key. The lower
--    lanes keep a share of each claim (onboarding.lane_shares, _claim_jobs' reserved), which
--    backfill_progress shows with the work ahead of a backfill. A backfill looks its profiles' jobs
--    up by index (_enqueue, _account_key and backfill above compare user ids in the default
--    collation: the "C" of ids read through _as_owner made each look-up a scan of the queue).
------------------------------------------------------------------------------------------------
DROP FUNCTION onboarding._next_due_in();
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

CREATE OR REPLACE FUNCTION onboarding._job_state_machine() RETURNS trigger
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
    IF NEW.state = 'pending' THEN
        -- Back in the queue, maybe before where the workers' claims start: they look from the
        -- front once this commits (src/wake.rs).
        PERFORM onboarding._wake_worker_after_commit();
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

REVOKE EXECUTE ON FUNCTION onboarding._next_due_in(timestamptz[], bigint[]) FROM PUBLIC;

-- Progress of each backfill: jobs enqueued and provisioned so far, and the time left at the
-- current pace; and where its jobs wait: their lane (3, backfill and reconcile), how many of them
-- are pending, and how many pending jobs of the lanes claimed before it (signups, retries, email
-- syncs) go first, beyond its share (onboarding.lane_shares).
CREATE OR REPLACE VIEW onboarding.backfill_progress AS
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
-- 10. Maintenance reads only what it acts on: the running jobs rescue may take back and the
--     finished ones retention may prune have indexes of their own (each was a scan of the whole
--     queue, its history included, about once a second).
------------------------------------------------------------------------------------------------
CREATE INDEX jobs_running ON onboarding.jobs (claimed_at) WHERE state = 'running';
CREATE INDEX jobs_done_by_finished_at ON onboarding.jobs (finished_at) WHERE state IN ('succeeded', 'skipped', 'cancelled');

------------------------------------------------------------------------------------------------
-- 11. The Stripe snapshot lists accounts only when Connect is in use (a Connect policy, account
--     or job: src/tables.rs), and says so, as it says when Stripe refuses to list them: a Stripe
--     account without Connect refuses the call, which failed audit_orphans, audit_mismatches and
--     reconcile.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.stripe_snapshots ADD COLUMN accounts_listed boolean NOT NULL DEFAULT true,
                                        ADD COLUMN accounts_not_listed_why text;

-- Why snapshot `snap` holds no Connect accounts (NULL: it does).
CREATE FUNCTION onboarding._accounts_not_listed_why(snap bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN NOT s.accounts_listed
                THEN coalesce('Stripe refused to list them: ' || s.accounts_not_listed_why,
                              'Connect is not in use here (no Connect policy, account or job)') END
      FROM onboarding.stripe_snapshots s WHERE s.id = snap
$$;
REVOKE EXECUTE ON FUNCTION onboarding._accounts_not_listed_why(bigint) FROM PUBLIC;

-- The latest finished snapshot, taking a fresh one first if asked. Says so when it holds no
-- accounts (src/maintenance/snapshot.rs: Connect not in use, or Stripe refused to list them).
CREATE OR REPLACE FUNCTION onboarding._snapshot(refresh boolean) RETURNS bigint
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

------------------------------------------------------------------------------------------------
-- 12. A stripe_request event tells when its request was sent, not when it was queued for the
--     rate budget (sequence() and the Stripe-call metrics misreported by the budget's wait).
------------------------------------------------------------------------------------------------
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
REVOKE EXECUTE ON FUNCTION onboarding._requests_sent(bigint[], integer[], double precision[]) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 13. Stripe back into Postgres: a worker reads Stripe's events (src/maintenance/events.rs) and
--     keeps the readiness of the Connect accounts this extension created (sql/inbound.sql).
------------------------------------------------------------------------------------------------
-- One row per Connect account this extension created (added when its job succeeds: the trigger
-- below), with what Stripe last said of it.
CREATE TABLE onboarding.connect_accounts (
    account_id text PRIMARY KEY,
    profile_table regclass NOT NULL,
    user_id text NOT NULL,
    charges_enabled boolean NOT NULL DEFAULT false,
    payouts_enabled boolean NOT NULL DEFAULT false,
    details_submitted boolean NOT NULL DEFAULT false,
    requirements_currently_due text[] NOT NULL DEFAULT '{}',
    disabled_reason text,
    -- The owner disconnected the account from the platform (account.application.deauthorized).
    deauthorized_at timestamptz,
    ready boolean GENERATED ALWAYS AS (charges_enabled AND payouts_enabled AND details_submitted
                                       AND disabled_reason IS NULL AND deauthorized_at IS NULL) STORED,
    -- Stripe's time (Unix seconds) of the state held: the applied event's `created`, or when the
    -- account itself was last read. An event older than this never overwrites it
    -- (core/src/inbound.rs). NULL: nothing heard yet (a new account: nothing is enabled).
    as_of bigint,
    -- Read the account itself at the next poll: held before events were read, an event of the
    -- same second as the state held, or the cursor lost.
    refresh_due boolean NOT NULL DEFAULT false,
    -- The profile's readiness columns (attach's readiness_columns) are to be written at the next
    -- poll: the state changed, or the columns were just named, or the profile's row was held.
    profile_behind boolean NOT NULL DEFAULT false,
    -- An account link was issued: until then, while not ready, the account itself is read at
    -- every poll (a platform's event list need not carry its connected accounts' events).
    watch_until timestamptz,
    -- While profile_behind: when to write the profile next (a held row or table backs off).
    profile_retry_at timestamptz NOT NULL DEFAULT now(),
    profile_attempts integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connect_accounts_by_user ON onboarding.connect_accounts (user_id);
CREATE INDEX connect_accounts_to_refresh ON onboarding.connect_accounts (account_id) WHERE refresh_due;
CREATE INDEX connect_accounts_profile_behind ON onboarding.connect_accounts (profile_retry_at) WHERE profile_behind;
CREATE INDEX connect_accounts_watched ON onboarding.connect_accounts (watch_until) WHERE watch_until IS NOT NULL;
CREATE INDEX connect_accounts_by_age ON onboarding.connect_accounts (as_of NULLS FIRST);

-- Every event applied, so that none is applied twice (a page read again after a crash, a
-- cursor moved back). Pruned with the jobs (onboarding.prune), once past Stripe's 30 days.
CREATE TABLE onboarding.stripe_events_applied (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    created timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_applied_by_time ON onboarding.stripe_events_applied (applied_at);

-- Events the reader could not read or apply safely (bytes that are not UTF-8 or an unpaired
-- surrogate, a NUL, an id or field past Stripe's sizes): set aside with the reason, so that one
-- event never stops the reader; the stats show how many. `event_id` is the event's id when it was
-- usable (at most 255 characters), else a digest of the reason. An event with a usable id is read
-- again on its own (GET /v1/events/{id}) at `retry_at`, backing off, and leaves this table once
-- applied; NULL: never again (no usable id, or Stripe no longer has it).
CREATE TABLE onboarding.stripe_events_set_aside (
    event_id text PRIMARY KEY CHECK (length(event_id) <= 255),
    reason text NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    retry_at timestamptz
);
CREATE INDEX stripe_events_set_aside_to_retry ON onboarding.stripe_events_set_aside (retry_at) WHERE retry_at IS NOT NULL;

-- Sets events aside (`ids` NULL where none is usable), or again after a retry failed: read again a
-- minute later, then 4, 16… at most 6 hours apart (`retry`: false when reading it again is pointless).
CREATE FUNCTION onboarding._set_events_aside(ids text[], reasons text[], retry boolean DEFAULT true) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.stripe_events_set_aside AS s (event_id, reason, retry_at)
    SELECT coalesce(left(e.id, 255), 'unusable id ' || md5(e.reason)), left(e.reason, 500),
           CASE WHEN retry AND e.id IS NOT NULL AND length(e.id) <= 255 THEN now() + interval '1 minute' END
      FROM unnest(ids, reasons) AS e(id, reason)
    ON CONFLICT (event_id) DO UPDATE
       SET reason = EXCLUDED.reason, attempts = s.attempts + 1,
           retry_at = CASE WHEN EXCLUDED.retry_at IS NOT NULL
                           THEN now() + least(interval '1 minute' * power(4, least(s.attempts + 1, 6)), interval '6 hours') END;
$$;

-- Where the events reader is: one row.
CREATE TABLE onboarding.events_cursor (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- The newest event read; NULL: start at Stripe's newest event at the next poll.
    last_event_id text,
    last_event_created timestamptz,
    polled_at timestamptz,
    next_poll_at timestamptz NOT NULL DEFAULT now(),
    -- The worker reading now (one at a time; a reader gone for a minute is taken over).
    polling_pid integer,
    polling_since timestamptz,
    -- When an account link was last issued: onboarding owners come back soon, so poll faster.
    last_link_at timestamptz,
    -- When the cursor was last found past Stripe's 30 days of events (every account re-read).
    cursor_lost_at timestamptz,
    events_applied bigint NOT NULL DEFAULT 0
);
INSERT INTO onboarding.events_cursor DEFAULT VALUES;

-- A Connect account job that succeeded: its account is followed from now on.
CREATE FUNCTION onboarding._follow_account() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id)
    VALUES (NEW.stripe_id, NEW.profile_table, NEW.user_id)
    ON CONFLICT (account_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_follow_account AFTER UPDATE OF state ON onboarding.jobs
    FOR EACH ROW WHEN (NEW.kind = 'create_connect_account' AND NEW.state = 'succeeded' AND NEW.stripe_id IS NOT NULL
                       AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION onboarding._follow_account();

-- Whether the user's Connect account can take charges and receive payouts (charges and payouts
-- enabled, details submitted, not disabled or disconnected), as Stripe last said; false for a
-- user without an account, and for a profile the calling role may not read. An index look-up,
-- then (for a ready account) the caller's right to read the profile, so it can sit in RLS policies
-- of other tables. The user id is text, compared with jobs.user_id's form; the uuid and bigint
-- forms below turn theirs into text with PostgreSQL's own casts. Never anyelement: a SECURITY
-- DEFINER function must not cast or compare a value whose type (and so casts and operators) its
-- caller controls (README, "Security model").
CREATE FUNCTION onboarding.account_ready(user_id text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM onboarding.connect_accounts c JOIN onboarding.attachments a USING (profile_table)
                    WHERE c.user_id = $1 AND c.ready AND onboarding._caller_reads_profile(a, c.user_id) = 'visible')
$$;
CREATE FUNCTION onboarding.account_ready(user_id uuid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT onboarding.account_ready($1::text)
$$;
CREATE FUNCTION onboarding.account_ready(user_id bigint) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT onboarding.account_ready($1::text)
$$;

-- The user's Connect accounts with what Stripe last said of them: those of profiles the calling
-- role may read (none otherwise, without saying whether any exists).
CREATE FUNCTION onboarding.account_status(user_id text)
RETURNS TABLE (account_id text, profile_table regclass, ready boolean, charges_enabled boolean,
               payouts_enabled boolean, details_submitted boolean, requirements_currently_due text[],
               disabled_reason text, deauthorized_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.account_id, c.profile_table, c.ready, c.charges_enabled, c.payouts_enabled, c.details_submitted,
           c.requirements_currently_due, c.disabled_reason, c.deauthorized_at, c.updated_at
      FROM onboarding.connect_accounts c JOIN onboarding.attachments a USING (profile_table)
     WHERE c.user_id = $1 AND onboarding._caller_reads_profile(a, c.user_id) = 'visible'
     ORDER BY c.account_id
$$;
CREATE FUNCTION onboarding.account_status(user_id uuid)
RETURNS TABLE (account_id text, profile_table regclass, ready boolean, charges_enabled boolean,
               payouts_enabled boolean, details_submitted boolean, requirements_currently_due text[],
               disabled_reason text, deauthorized_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM onboarding.account_status($1::text)
$$;
CREATE FUNCTION onboarding.account_status(user_id bigint)
RETURNS TABLE (account_id text, profile_table regclass, ready boolean, charges_enabled boolean,
               payouts_enabled boolean, details_submitted boolean, requirements_currently_due text[],
               disabled_reason text, deauthorized_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM onboarding.account_status($1::text)
$$;

-- The events reader takes its turn, when a poll is due and no other worker is polling (or the
-- one that was has been gone a minute): `polling`, with the cursor, the accounts to read again,
-- the seconds since the last account link and when the last poll was (Unix seconds: without a
-- cursor, events are read from then on), the events set aside to read again and the customers to
-- read (two events of one second). Otherwise the seconds until the next poll is due, never more
-- than `every` (onboarding.events_poll_interval: lowered by a reload, it applies at once).
CREATE FUNCTION onboarding._events_poll_begin(refresh_at_most integer, every interval)
RETURNS TABLE (polling boolean, due_in double precision, last_event_id text, accounts_to_refresh text[],
               since_link double precision, last_polled_at bigint, events_to_retry text[],
               customers_to_refresh text[])
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c SET next_poll_at = now() + every WHERE c.next_poll_at > now() + every;
    UPDATE onboarding.events_cursor c SET polling_pid = pg_backend_pid(), polling_since = now()
     WHERE c.next_poll_at <= now() AND (c.polling_pid IS NULL OR c.polling_since < now() - interval '1 minute');
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
                     WHERE a.watch_until > now() AND NOT a.ready
                    UNION ALL
                    (SELECT a.account_id, 2 FROM onboarding.connect_accounts a
                      WHERE a.as_of IS NULL OR a.as_of < extract(epoch FROM now() - interval '1 day')
                      ORDER BY a.as_of NULLS FIRST LIMIT 5)) d
             GROUP BY d.account_id ORDER BY min(d.rank), d.account_id LIMIT refresh_at_most);
        events_to_retry := ARRAY(SELECT s.event_id FROM onboarding.stripe_events_set_aside s
                                  WHERE s.retry_at <= now() ORDER BY s.retry_at LIMIT 5);
        customers_to_refresh := ARRAY(SELECT x.customer_id FROM onboarding.customer_changes x
                                       WHERE x.refresh_due ORDER BY x.customer_id LIMIT refresh_at_most);
    END IF;
    RETURN NEXT;
END $$;

-- Which of these events are new (not applied before), recording them as applied.
CREATE FUNCTION onboarding._events_not_applied(ids text[], types text[], created bigint[]) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh text[];
BEGIN
    WITH added AS (
        INSERT INTO onboarding.stripe_events_applied (event_id, type, created)
        SELECT e.id, e.type, to_timestamp(e.created) FROM unnest(ids, types, created) AS e(id, type, created)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id)
    SELECT coalesce(array_agg(event_id), '{}') INTO fresh FROM added;
    -- An event set aside earlier and read again is applied (now or before): no longer aside.
    DELETE FROM onboarding.stripe_events_set_aside s WHERE s.event_id = ANY (ids);
    RETURN fresh;
END $$;

-- What Stripe says of accounts (from events or from reading them), each a JSON object with
-- account, as_of and either the readiness fields or deauthorized: true. Only followed accounts
-- are written, and only over older state (the worker weighed same-second events already:
-- core/src/inbound.rs). A change of readiness is announced on channel onboarding_accounts with
-- {"user_id", "account_id", "table", "ready"}, at commit; a change of what Stripe says is logged
-- as a stripe_account_updated event (sequence()).
CREATE FUNCTION onboarding._apply_account_states(states jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed record;
    written integer := 0;
BEGIN
    FOR changed IN
        WITH incoming AS (
            SELECT s->>'account' AS account_id, (s->>'as_of')::bigint AS as_of,
                   coalesce((s->>'deauthorized')::boolean, false) AS deauthorized, s
              FROM jsonb_array_elements(states) s),
        -- Each account's state after what Stripe says (a deauthorization keeps the last readiness).
        next AS (
            SELECT c.account_id, c.ready AS was_ready, n.*,
                   greatest(c.as_of, i.as_of) AS as_of, coalesce((i.s->>'refresh_due')::boolean, false) AS refresh_due,
                   n::text IS DISTINCT FROM (c.charges_enabled, c.payouts_enabled, c.details_submitted,
                                            c.requirements_currently_due, c.disabled_reason, c.deauthorized_at)::text
                       AS state_changed,
                   c.profile_behind OR EXISTS (SELECT FROM onboarding.attachments a
                                                WHERE a.profile_table = c.profile_table AND a.readiness_columns IS NOT NULL)
                       AS profile_follows
              FROM onboarding.connect_accounts c
              JOIN incoming i USING (account_id)
             CROSS JOIN LATERAL (SELECT
                   CASE WHEN i.deauthorized THEN c.charges_enabled ELSE coalesce((i.s->>'charges_enabled')::boolean, false) END AS charges_enabled,
                   CASE WHEN i.deauthorized THEN c.payouts_enabled ELSE coalesce((i.s->>'payouts_enabled')::boolean, false) END AS payouts_enabled,
                   CASE WHEN i.deauthorized THEN c.details_submitted ELSE coalesce((i.s->>'details_submitted')::boolean, false) END AS details_submitted,
                   CASE WHEN i.deauthorized THEN c.requirements_currently_due
                        ELSE ARRAY(SELECT jsonb_array_elements_text(coalesce(i.s->'requirements_currently_due', '[]'))) END
                       AS requirements_currently_due,
                   CASE WHEN i.deauthorized THEN c.disabled_reason ELSE i.s->>'disabled_reason' END AS disabled_reason,
                   CASE WHEN i.deauthorized THEN coalesce(c.deauthorized_at, to_timestamp(i.as_of)) ELSE c.deauthorized_at END
                       AS deauthorized_at) n
             WHERE c.as_of IS NULL OR c.as_of <= i.as_of),
        updated AS (
            UPDATE onboarding.connect_accounts c
               SET charges_enabled = n.charges_enabled, payouts_enabled = n.payouts_enabled,
                   details_submitted = n.details_submitted, requirements_currently_due = n.requirements_currently_due,
                   disabled_reason = n.disabled_reason, deauthorized_at = n.deauthorized_at,
                   as_of = n.as_of, refresh_due = n.refresh_due,
                   -- The profile's readiness columns follow (_write_profile_readiness), if it has any.
                   profile_behind = CASE WHEN n.state_changed THEN n.profile_follows ELSE c.profile_behind END,
                   updated_at = now()
              FROM next n
             WHERE c.account_id = n.account_id
            RETURNING c.account_id, c.user_id, c.profile_table, c.ready, c.charges_enabled, c.payouts_enabled,
                      c.details_submitted, c.requirements_currently_due, c.disabled_reason, c.deauthorized_at)
        SELECT u.*, n.was_ready, n.state_changed FROM updated u JOIN next n USING (account_id)
    LOOP
        written := written + 1;
        IF changed.state_changed THEN
            -- The user's sequence() shows it (an event outside any job).
            INSERT INTO onboarding.events (job_id, user_id, step, detail)
            VALUES (NULL, changed.user_id, 'stripe_account_updated', jsonb_build_object(
                'account_id', changed.account_id, 'ready', changed.ready,
                'charges_enabled', changed.charges_enabled, 'payouts_enabled', changed.payouts_enabled,
                'details_submitted', changed.details_submitted,
                'requirements_currently_due', to_jsonb(changed.requirements_currently_due),
                'disabled_reason', changed.disabled_reason, 'deauthorized', changed.deauthorized_at IS NOT NULL));
        END IF;
        IF changed.ready IS DISTINCT FROM changed.was_ready
           AND coalesce(current_setting('onboarding.notify_account_changes', true), 'on')::boolean THEN
            -- Table names are in pg_class, which every role reads: nothing more goes out.
            PERFORM pg_notify('onboarding_accounts', changed.profile_table::text);
        END IF;
    END LOOP;
    RETURN written;
END $$;

-- Marks accounts to be read again at the next poll (same-second events, a lost cursor).
CREATE FUNCTION onboarding._refresh_accounts(accounts text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF accounts IS NULL THEN
        UPDATE onboarding.connect_accounts SET refresh_due = true WHERE NOT refresh_due;
    ELSE
        UPDATE onboarding.connect_accounts SET refresh_due = true WHERE account_id = ANY (accounts) AND NOT refresh_due;
    END IF;
END $$;

-- The poll is over: the cursor moves to the newest event read (if any), the next poll is due in
-- `next_in`, and `applied` more events count as applied. `read_at`: when the events were read
-- (Unix seconds; NULL: the read failed, and the lag grows). `lost`: the cursor was past Stripe's
-- retention and starts again at the newest event.
CREATE FUNCTION onboarding._events_poll_end(new_cursor text, new_cursor_created bigint, applied integer,
                                            next_in interval, read_at bigint, lost boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c
       SET last_event_id = CASE WHEN lost THEN new_cursor ELSE coalesce(new_cursor, c.last_event_id) END,
           last_event_created = CASE WHEN new_cursor IS NULL AND NOT lost THEN c.last_event_created
                                     ELSE to_timestamp(new_cursor_created) END,
           polled_at = coalesce(to_timestamp(read_at), c.polled_at), next_poll_at = now() + next_in,
           polling_pid = NULL, polling_since = NULL,
           cursor_lost_at = CASE WHEN lost THEN now() ELSE c.cursor_lost_at END,
           events_applied = c.events_applied + applied
     WHERE c.polling_pid = pg_backend_pid();
    -- Ids past Stripe's 30 days cannot come again.
    DELETE FROM onboarding.stripe_events_applied e
     WHERE e.event_id = ANY (ARRAY(SELECT o.event_id FROM onboarding.stripe_events_applied o
                                    WHERE o.applied_at < now() - interval '31 days' LIMIT 1000));
    DELETE FROM onboarding.stripe_events_set_aside e WHERE e.set_aside_at < now() - interval '31 days';
END $$;

-- An account link was issued for `account`: its owner may finish onboarding in minutes, so poll
-- soon and often (every `fast` for `fast_for`), and read the account itself at each of those polls
-- until it is ready: the readiness never depends on the platform's event list alone.
CREATE FUNCTION onboarding._account_link_issued(fast interval, account text, fast_for interval) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor SET last_link_at = now(), next_poll_at = least(next_poll_at, now() + fast);
    UPDATE onboarding.connect_accounts c SET watch_until = now() + fast_for WHERE c.account_id = account;
END $$;

-- Accounts created before 0.3.0 are followed too, read from Stripe at the first poll.
INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id, refresh_due)
SELECT DISTINCT ON (j.stripe_id) j.stripe_id, j.profile_table, j.user_id, true
  FROM onboarding.jobs j
 WHERE j.kind = 'create_connect_account' AND j.state = 'succeeded' AND j.stripe_id IS NOT NULL
 ORDER BY j.stripe_id, j.id DESC;

REVOKE EXECUTE ON FUNCTION onboarding._follow_account(),
    onboarding.account_ready(text), onboarding.account_ready(uuid), onboarding.account_ready(bigint),
    onboarding.account_status(text), onboarding.account_status(uuid), onboarding.account_status(bigint),
    onboarding._events_poll_begin(integer, interval),
    onboarding._events_not_applied(text[], text[], bigint[]), onboarding._set_events_aside(text[], text[], boolean),
    onboarding._apply_account_states(jsonb),
    onboarding._refresh_accounts(text[]), onboarding._events_poll_end(text, bigint, integer, interval, bigint, boolean),
    onboarding._account_link_issued(interval, text, interval) FROM PUBLIC;


-- The tables hold nothing for PUBLIC (sql/privileges.sql).
REVOKE ALL ON onboarding.connect_accounts, onboarding.events_cursor, onboarding.stripe_events_applied,
    onboarding.stripe_events_set_aside FROM PUBLIC;

-- The events reader's lines in stats and sequence(); stats_for in its final 0.3.0 form (it needs
-- the tables above).
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

CREATE OR REPLACE FUNCTION onboarding.sequence(user_id text)
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

------------------------------------------------------------------------------------------------
-- 14. Customers changed in Stripe outside the extension (deleted, or their email changed) follow
--     each table's policy (set_stripe_change_policy), and audit_mismatches shows them at once;
--     profile columns named at attach (readiness_columns) follow the Connect account's readiness.
------------------------------------------------------------------------------------------------
ALTER TABLE onboarding.attachments
    ADD COLUMN on_customer_deleted text NOT NULL DEFAULT 'flag' CHECK (on_customer_deleted IN ('flag', 'recreate')),
    ADD COLUMN on_stripe_email_changed text NOT NULL DEFAULT 'audit'
        CHECK (on_stripe_email_changed IN ('audit', 'update_profile')),
    ADD COLUMN readiness_columns jsonb;

-- attach() takes readiness_columns: profile columns kept in step with the account's readiness.
DROP FUNCTION onboarding.attach(regclass, name, name, name, name, text, text);
CREATE FUNCTION onboarding.attach(
    profile_table regclass,
    id_column name DEFAULT 'id',
    email_column name DEFAULT 'email',
    customer_column name DEFAULT 'stripe_customer_id',
    connect_account_column name DEFAULT NULL,
    connect_policy text DEFAULT 'never',
    connect_condition text DEFAULT NULL,
    readiness_columns jsonb DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id_type regtype;
    text_types CONSTANT regtype[] := ARRAY['text', 'character varying']::regtype[];
    not_boolean text;
    generated text;
BEGIN
    IF profile_table IS NULL THEN
        RAISE EXCEPTION 'onboarding.attach: profile_table is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
    id_type := onboarding._column_type(profile_table, id_column, 'id',
        ARRAY['uuid', 'text', 'character varying', 'bigint', 'integer']::regtype[]);
    PERFORM onboarding._column_type(profile_table, email_column, 'email', text_types || coalesce(to_regtype('citext'), 'text'));
    PERFORM onboarding._column_type(profile_table, customer_column, 'customer', text_types);
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
    IF (SELECT count(*) <> count(DISTINCT c) FROM unnest(ARRAY[id_column, email_column, customer_column, connect_account_column]
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
        (profile_table, id_column, id_type, email_column, customer_column, connect_account_column, readiness_columns)
    VALUES (profile_table, id_column, id_type, email_column, customer_column, connect_account_column, readiness_columns)
    ON CONFLICT ON CONSTRAINT attachments_pkey DO UPDATE
        SET id_column = EXCLUDED.id_column, id_type = EXCLUDED.id_type, email_column = EXCLUDED.email_column,
            customer_column = EXCLUDED.customer_column, connect_account_column = EXCLUDED.connect_account_column,
            readiness_columns = EXCLUDED.readiness_columns;
    -- The table's accounts are written to the new columns at the next poll.
    UPDATE onboarding.connect_accounts c SET profile_behind = true
     WHERE c.profile_table = attach.profile_table AND readiness_columns IS NOT NULL;

    PERFORM onboarding._create_triggers(a) FROM onboarding.attachments a WHERE a.profile_table = attach.profile_table;
    PERFORM onboarding.set_connect_policy(profile_table, connect_policy, connect_condition);
    RETURN format('onboarding: attached to %s (id %I, email %I, customer %I, connect account %s, connect policy %s%s)',
        profile_table, id_column, email_column, customer_column,
        coalesce(quote_ident(connect_account_column), 'none'),
        connect_policy || coalesce(': ' || connect_condition, ''),
        coalesce(', readiness columns ' || readiness_columns::text, ''));
END $$;
COMMENT ON FUNCTION onboarding.attach IS
    'Provision a Stripe customer for every profile inserted into this table, after the insert commits';

-- How long a profile write that must wait (its row or table held) waits before the next try: a
-- second, doubling with each try, at most a minute. It never holds the head of the queue.
CREATE FUNCTION onboarding._profile_write_backoff(attempts integer) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(interval '1 second' * power(2, least(attempts, 6)), interval '1 minute');

-- Writes the readiness of up to `at_most` accounts whose profile is behind to the profile columns
-- its table named (attach's readiness_columns), each on its own (a subtransaction), as the
-- table's owner (onboarding._as_owner; the worker waits 50 ms for a lock at most). A profile row
-- another transaction holds waits for the next poll; one the table refuses (its trigger fails, a
-- statement times out) is given up with a WARNING. Returns how many wait.
CREATE FUNCTION onboarding._write_profile_readiness(at_most integer, per_table integer DEFAULT 10) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c onboarding.connect_accounts;
    a onboarding.attachments;
    set_aside regclass[] := '{}';
    waiting integer := 0;
BEGIN
    FOR c IN SELECT (x).* FROM (
                 SELECT x, row_number() OVER (PARTITION BY x.profile_table ORDER BY x.profile_retry_at) AS nth
                   FROM onboarding.connect_accounts x
                  WHERE x.profile_behind AND x.profile_retry_at <= now()
                  ORDER BY x.profile_retry_at LIMIT at_most * 4) d
              WHERE d.nth <= per_table ORDER BY (d.x).profile_retry_at LIMIT at_most LOOP
        IF c.profile_table = ANY (set_aside) THEN
            waiting := waiting + 1;
            CONTINUE;
        END IF;
        BEGIN
            SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = c.profile_table;
            IF a.readiness_columns IS NOT NULL AND a.connect_account_column IS NOT NULL THEN
                PERFORM FROM onboarding._as_owner(a.profile_table,
                    format('UPDATE %s SET %s WHERE %I = $1::%s AND %I = $2', a.profile_table,
                           (SELECT string_agg(format('%I = $%s::boolean', r.value,
                                   CASE r.key WHEN 'ready' THEN 3 WHEN 'charges_enabled' THEN 4
                                              WHEN 'payouts_enabled' THEN 5 ELSE 6 END), ', ' ORDER BY r.key)
                              FROM jsonb_each_text(a.readiness_columns) r),
                           a.id_column, a.id_type, a.connect_account_column),
                    ARRAY[c.user_id, c.account_id, c.ready::text, c.charges_enabled::text, c.payouts_enabled::text,
                          c.details_submitted::text]);
            END IF;
            UPDATE onboarding.connect_accounts x SET profile_behind = false, profile_attempts = 0
             WHERE x.account_id = c.account_id;
        EXCEPTION
            WHEN lock_not_available THEN
                -- The profile's row or table is held: later, and nothing else of this table now.
                waiting := waiting + 1;
                set_aside := set_aside || c.profile_table;
                UPDATE onboarding.connect_accounts x
                   SET profile_retry_at = now() + onboarding._profile_write_backoff(x.profile_attempts),
                       profile_attempts = x.profile_attempts + 1
                 WHERE x.account_id = c.account_id;
            WHEN query_canceled OR assert_failure OR OTHERS THEN
                -- (OTHERS leaves out query_canceled and assert_failure: an owner's trigger can raise either.)
                IF SQLSTATE = '57014' THEN
                    set_aside := set_aside || c.profile_table;
                END IF;
                RAISE WARNING 'onboarding: writing the readiness of Connect account % to the profile of user % in % failed: %',
                    c.account_id, c.user_id, c.profile_table, left(SQLERRM, 200);
                UPDATE onboarding.connect_accounts x SET profile_behind = false, profile_attempts = 0
                 WHERE x.account_id = c.account_id;
        END;
    END LOOP;
    RETURN waiting;
END $$;

-- What Stripe said of customers after their creation: one row per customer a deletion or an email
-- change was heard for (customer.deleted, customer.updated), carrying metadata.user_id.
CREATE TABLE onboarding.customer_changes (
    customer_id text PRIMARY KEY,
    -- The customer's metadata.user_id (the extension sets it on every customer it makes).
    user_id text NOT NULL,
    -- The attached table whose profile linked the customer when the change was handled (NULL:
    -- none did, e.g. the extension deleted it itself after its profile was deleted).
    profile_table regclass,
    -- The email as Stripe last said, and Stripe's time of it (Unix seconds): an older change never
    -- overwrites a newer one. audit_mismatches compares it with the profile's.
    stripe_email text,
    email_as_of bigint,
    deleted_at timestamptz,
    -- The table's policy was applied and the change logged; false: at the next poll (new, or the
    -- profile's row was held by another transaction).
    handled boolean NOT NULL DEFAULT false,
    -- flagged, recreated, email matches, email differs, profile email updated, not linked, synced
    -- by this extension (its own email sync: nothing to look up or log), or
    -- 'failed: ...' (the profile's table refused the write).
    outcome text,
    -- While not handled: when to try next (a profile row or table held backs off), and how often
    -- it was tried.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    -- Read the customer itself at the next poll: two of its events came in the same second, and
    -- only Stripe can say which is the newer.
    refresh_due boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_changes_unhandled ON onboarding.customer_changes (next_attempt_at) WHERE NOT handled;
CREATE INDEX customer_changes_to_refresh ON onboarding.customer_changes (customer_id) WHERE refresh_due;
CREATE INDEX customer_changes_handled ON onboarding.customer_changes (updated_at) WHERE handled;  -- for prune()

-- What a table does when Stripe says one of its customers changed outside the extension. NULL
-- keeps a setting as it is.
--   customer_deleted: 'flag' (the default: the profile keeps the ID; a WARNING, an event in
--     sequence() and a line in audit_mismatches, which reconcile acts on) or 'recreate' (the ID is
--     cleared and a new customer created, under a new idempotency key).
--   email_changed: 'audit' (the default: the profile is the source of truth; the difference shows in
--     audit_mismatches, and reconcile copies the profile's email to Stripe) or 'update_profile'
--     (Stripe's email is written to the profile, without being sent back to Stripe).
CREATE FUNCTION onboarding.set_stripe_change_policy(profile_table regclass, customer_deleted text DEFAULT NULL,
                                                    email_changed text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a onboarding.attachments;
BEGIN
    SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = set_stripe_change_policy.profile_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'onboarding: table % is not attached', profile_table
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'attach() it first.';
    END IF;
    IF customer_deleted NOT IN ('flag', 'recreate') THEN
        RAISE EXCEPTION 'onboarding: customer_deleted must be flag or recreate, not %', coalesce(onboarding._quoted_prefix(customer_deleted), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'flag (the default) keeps the ID and reports it; recreate clears it and creates a new customer.';
    END IF;
    IF email_changed NOT IN ('audit', 'update_profile') THEN
        RAISE EXCEPTION 'onboarding: email_changed must be audit or update_profile, not %', coalesce(onboarding._quoted_prefix(email_changed), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'audit (the default) keeps the profile as the source of truth; update_profile copies Stripe''s email to it.';
    END IF;
    IF email_changed = 'update_profile' AND EXISTS (
           SELECT FROM pg_attribute c WHERE c.attrelid = a.profile_table AND c.attname = a.email_column AND c.attgenerated <> '') THEN
        RAISE EXCEPTION 'onboarding: the email column % of % is generated: Stripe''s email cannot be copied to it', quote_ident(a.email_column), profile_table
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep email_changed => ''audit'' for this table.';
    END IF;
    UPDATE onboarding.attachments t
       SET on_customer_deleted = coalesce(customer_deleted, t.on_customer_deleted),
           on_stripe_email_changed = coalesce(email_changed, t.on_stripe_email_changed)
     WHERE t.profile_table = set_stripe_change_policy.profile_table
    RETURNING * INTO a;
    RETURN format('onboarding: %s: a customer deleted in Stripe is %s; an email changed in Stripe is %s', profile_table,
                  CASE a.on_customer_deleted WHEN 'flag' THEN 'flagged' ELSE 'recreated' END,
                  CASE a.on_stripe_email_changed WHEN 'audit' THEN 'audited' ELSE 'copied to the profile' END);
END $$;

-- Records what events say of customers (from the events reader: each a JSON object with
-- customer, user_id, as_of and either deleted: true or email and the idempotency_key of the
-- request that set it), to be handled next (_handle_customer_changes). A deletion stays; an email
-- older than the one held is dropped. An email this extension's own sync set (its job's key) is
-- handled at once: the profile had it, so there is nothing to look up or log (the audits still
-- read it, as Stripe's newest email). `refresh: true`: another event of the same second may be
-- the newer one, so the customer is read at the next poll; `refreshed: true`: this is that read
-- (a deleted customer's carries no user_id: the one recorded is kept).
CREATE FUNCTION onboarding._record_customer_changes(changes jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO onboarding.customer_changes AS c
           (customer_id, user_id, stripe_email, email_as_of, deleted_at, handled, profile_table, outcome, refresh_due)
    SELECT s->>'customer', coalesce(s->>'user_id', known.user_id), s->>'email',
           CASE WHEN s ? 'email' THEN (s->>'as_of')::bigint END,
           CASE WHEN coalesce((s->>'deleted')::boolean, false) THEN to_timestamp((s->>'as_of')::bigint) END,
           sync.profile_table IS NOT NULL, sync.profile_table,
           CASE WHEN sync.profile_table IS NOT NULL THEN 'synced by this extension' END,
           coalesce((s->>'refresh')::boolean, false)
      FROM jsonb_array_elements(changes) s
      LEFT JOIN onboarding.customer_changes known ON known.customer_id = s->>'customer'
      LEFT JOIN LATERAL (
          SELECT j.profile_table FROM onboarding.jobs j
           WHERE j.user_id = s->>'user_id' AND j.kind = 'update_customer_email' AND j.stripe_id = s->>'customer'
             AND j.idempotency_key = s->>'idempotency_key'
           LIMIT 1) sync ON true
     WHERE coalesce(s->>'user_id', known.user_id) IS NOT NULL  -- not made by this extension
    ON CONFLICT (customer_id) DO UPDATE
       SET stripe_email = CASE WHEN EXCLUDED.email_as_of >= coalesce(c.email_as_of, 0) THEN EXCLUDED.stripe_email
                               ELSE c.stripe_email END,
           email_as_of = greatest(c.email_as_of, EXCLUDED.email_as_of),
           deleted_at = coalesce(c.deleted_at, EXCLUDED.deleted_at),
           -- A new deletion is handled again, and so is a newer email unless it is the
           -- extension's own (`own`: it also supersedes an email change still waiting, not a
           -- deletion).
           (handled, profile_table, outcome) = (
               SELECT CASE WHEN o.own THEN true
                           WHEN o.newer THEN false
                           ELSE c.handled AND NOT (c.deleted_at IS NULL AND EXCLUDED.deleted_at IS NOT NULL) END,
                      CASE WHEN o.own THEN EXCLUDED.profile_table ELSE c.profile_table END,
                      CASE WHEN o.own THEN EXCLUDED.outcome ELSE c.outcome END
                 FROM (SELECT n.newer, n.newer AND EXCLUDED.handled AND (c.handled OR c.deleted_at IS NULL) AS own
                         FROM (SELECT coalesce(EXCLUDED.email_as_of >= coalesce(c.email_as_of, 0), false) AS newer) n) o),
           refresh_due = c.refresh_due OR EXCLUDED.refresh_due,
           updated_at = now();
    UPDATE onboarding.customer_changes c SET refresh_due = false
      FROM jsonb_array_elements(changes) s
     WHERE c.customer_id = s->>'customer' AND coalesce((s->>'refreshed')::boolean, false) AND c.refresh_due;
$$;

-- Applies each table's policy to up to `at_most` recorded changes not handled yet, each on its own
-- (a subtransaction): the profile that links the customer is found by metadata.user_id, read and
-- written as its table's owner (onboarding._as_owner; the worker waits 50 ms for a lock at most).
-- A change whose profile row or table another transaction holds waits for the next poll (a held
-- table that does not link the customer holds up none of its changes); one the table refuses (its
-- trigger fails, a statement times out) is recorded as failed. Returns how many wait.
CREATE FUNCTION onboarding._handle_customer_changes(at_most integer, per_table integer DEFAULT 10) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    due record;
    c onboarding.customer_changes;
    tie onboarding.stripe_ties;
    a onboarding.attachments;
    profile_email text;
    linked boolean;
    result text;
    sync_email text;
    set_aside regclass[] := '{}';
    waiting integer := 0;
BEGIN
    FOR due IN
        SELECT d.x, d.t FROM (
            SELECT x, t, row_number() OVER (PARTITION BY t.profile_table ORDER BY x.next_attempt_at) AS nth
              FROM (SELECT * FROM onboarding.customer_changes y
                     WHERE NOT y.handled AND y.next_attempt_at <= now() ORDER BY y.next_attempt_at LIMIT at_most * 4) x
              LEFT JOIN onboarding.stripe_ties t ON t.stripe_id = x.customer_id AND t.object = 'customer') d
         WHERE d.nth <= per_table ORDER BY (d.x).next_attempt_at LIMIT at_most
    LOOP
        c := due.x;
        tie := due.t;
        IF tie.profile_table = ANY (set_aside) THEN
            waiting := waiting + 1;
            CONTINUE;
        END IF;
        BEGIN
            SELECT * INTO a FROM onboarding.attachments t WHERE t.profile_table = tie.profile_table;
            linked := false;
            IF FOUND THEN
                SELECT true, r[1] INTO linked, profile_email
                  FROM onboarding._as_owner(a.profile_table, format('SELECT %I::text FROM %s WHERE %I = $1::%s AND %I = $2',
                           a.email_column, a.profile_table, a.id_column, a.id_type, a.customer_column),
                           ARRAY[tie.user_id, c.customer_id]) r;
                linked := coalesce(linked, false);
            END IF;
            IF NOT linked THEN
                -- Not made by this extension, or its profile no longer links it (deleted, relinked).
                result := 'not linked';
            ELSIF c.deleted_at IS NOT NULL THEN
                IF a.on_customer_deleted = 'recreate' THEN
                    PERFORM FROM onboarding._as_owner(a.profile_table, format('UPDATE %s SET %I = NULL WHERE %I = $1::%s AND %I = $2',
                                a.profile_table, a.customer_column, a.id_column, a.id_type, a.customer_column),
                                ARRAY[tie.user_id, c.customer_id]);
                    PERFORM onboarding._enqueue(a.profile_table, tie.user_id, 'create_customer', 'customer deleted in Stripe');
                    result := 'recreated';
                    RAISE LOG 'onboarding: Stripe customer % of % user % was deleted outside the extension: a new one is queued',
                        c.customer_id, a.profile_table, tie.user_id;
                ELSE
                    result := 'flagged';
                    RAISE WARNING 'onboarding: Stripe customer % of % user % was deleted outside the extension; the profile still links it',
                            c.customer_id, a.profile_table, tie.user_id
                        USING HINT = 'See onboarding.audit_mismatches(); onboarding.reconcile(dry_run => false) links or creates another, '
                                     'or set_stripe_change_policy(table, customer_deleted => ''recreate'') does it from now on.';
                END IF;
                INSERT INTO onboarding.events (job_id, user_id, step, detail)
                VALUES (NULL, tie.user_id, 'stripe_customer_deleted', jsonb_build_object('customer_id', c.customer_id,
                        'table', a.profile_table::text, 'outcome', result, 'deleted_at', c.deleted_at));
            ELSE
                IF btrim(c.stripe_email) IS NOT DISTINCT FROM btrim(profile_email) THEN
                    result := 'email matches';
                ELSIF a.on_stripe_email_changed = 'update_profile' AND c.stripe_email IS NOT NULL THEN
                    -- Not sent back to Stripe: the email trigger reads onboarding.sync_email.
                    sync_email := current_setting('onboarding.sync_email', true);
                    PERFORM set_config('onboarding.sync_email', 'off', true);
                    PERFORM FROM onboarding._as_owner(a.profile_table, format('UPDATE %s SET %I = $3 WHERE %I = $1::%s AND %I = $2',
                                a.profile_table, a.email_column, a.id_column, a.id_type, a.customer_column),
                                ARRAY[tie.user_id, c.customer_id, c.stripe_email]);
                    PERFORM set_config('onboarding.sync_email', coalesce(sync_email, 'on'), true);
                    result := 'profile email updated';
                ELSE
                    result := 'email differs';
                END IF;
                INSERT INTO onboarding.events (job_id, user_id, step, detail)
                VALUES (NULL, tie.user_id, 'stripe_customer_updated', jsonb_build_object('customer_id', c.customer_id,
                        'table', a.profile_table::text, 'outcome', result));
            END IF;
            UPDATE onboarding.customer_changes x
               SET handled = true, profile_table = CASE WHEN linked THEN a.profile_table END, outcome = result,
                   attempts = 0, updated_at = now()
             WHERE x.customer_id = c.customer_id;
        EXCEPTION
            WHEN lock_not_available THEN
                -- The profile's row or table is held: later, and nothing else of this table now.
                waiting := waiting + 1;
                set_aside := set_aside || tie.profile_table;
                UPDATE onboarding.customer_changes x
                   SET next_attempt_at = now() + onboarding._profile_write_backoff(x.attempts), attempts = x.attempts + 1
                 WHERE x.customer_id = c.customer_id;
            WHEN query_canceled OR assert_failure OR OTHERS THEN
                -- (OTHERS leaves out query_canceled and assert_failure: an owner's trigger can raise either.)
                IF SQLSTATE = '57014' THEN
                    set_aside := set_aside || tie.profile_table;
                END IF;
                RAISE WARNING 'onboarding: Stripe changed customer % of user %, and applying it failed: %',
                    c.customer_id, tie.user_id, left(SQLERRM, 200);
                UPDATE onboarding.customer_changes x
                   SET handled = true, outcome = left('failed: ' || SQLERRM, 200), updated_at = now()
                 WHERE x.customer_id = c.customer_id;
        END;
    END LOOP;
    RETURN waiting;
END $$;

-- Seconds until the next profile write is due (a readiness column, a customer change), 0 when one
-- is due now, NULL when none waits: the profile writer sleeps until then (src/profile_writer.rs).
CREATE FUNCTION onboarding._profile_writes_due_in() RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT greatest(extract(epoch FROM least(
               (SELECT min(c.profile_retry_at) FROM onboarding.connect_accounts c WHERE c.profile_behind),
               (SELECT min(x.next_attempt_at) FROM onboarding.customer_changes x WHERE NOT x.handled)) - now()), 0)::float8
$$;

-- Profiles whose stored Stripe ID is missing or deleted in Stripe, belongs to another user, or
-- whose email differs from the customer's: in the latest snapshot of Stripe, or in what Stripe's
-- events said since (sql/inbound.sql: a deletion, a newer email), so that a change made in the
-- Dashboard shows without a new snapshot.
CREATE OR REPLACE FUNCTION onboarding.audit_mismatches(refresh boolean DEFAULT true)
RETURNS TABLE (profile_table regclass, user_id text, object text, stripe_id text, problem text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap bigint := onboarding._snapshot(refresh);
    -- Whole seconds, as Stripe times events: one of the snapshot's second counts as newer.
    taken bigint := (SELECT floor(extract(epoch FROM s.started_at)) FROM onboarding.stripe_snapshots s WHERE s.id = snap);
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
           AND (o.id IS NULL OR d.deleted_at IS NOT NULL OR o.user_id IS DISTINCT FROM p.user_id OR t.stripe_id IS NULL
                OR (k.object = 'customer' AND btrim(stripe.email) IS DISTINCT FROM btrim(p.email)))
         ORDER BY p.profile_table::text, p.user_id, k.object;
END $$;

-- Retention also takes the events outside any job, which the events reader now writes often.
CREATE INDEX events_outside_jobs ON onboarding.events (at) WHERE job_id IS NULL;
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

REVOKE EXECUTE ON FUNCTION onboarding.set_stripe_change_policy(regclass, text, text),
    onboarding._record_customer_changes(jsonb), onboarding._handle_customer_changes(integer, integer),
    onboarding.attach(regclass, name, name, name, name, text, text, jsonb),
    onboarding._write_profile_readiness(integer, integer), onboarding._profile_write_backoff(integer),
    onboarding._profile_writes_due_in() FROM PUBLIC;
REVOKE ALL ON onboarding.customer_changes FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 15. No tenant can act on another's Stripe objects: the extension acts on an existing object
--     only through the tie it recorded when a job made it (sql/ties.sql), never because a
--     profile's column names it.
------------------------------------------------------------------------------------------------
-- One row per customer or Connect account a creation job made or adopted (after a look-up by
-- metadata.user_id), for the attached table and user id of that job. Kept after the job is pruned.
CREATE TABLE onboarding.stripe_ties (
    stripe_id text PRIMARY KEY,
    object text NOT NULL CHECK (object IN ('customer', 'account')),
    profile_table regclass NOT NULL,
    user_id text NOT NULL,
    -- The job that made or adopted it; NULL for a tie recorded otherwise: at the upgrade to 0.3.0
    -- (from the profiles that alone linked an object), by the sweep after a promotion, or by
    -- reconcile (an orphan it deletes, a live customer it relinks).
    job_id bigint,
    tied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_ties_by_profile ON onboarding.stripe_ties (profile_table, user_id);

-- Records the tie of `stripe_id` to the profile `uid` of `tbl`, unless it has one (the first tie
-- stands: an object is never handed from one profile to another). Returns whether it is tied to
-- that profile now.
CREATE FUNCTION onboarding._tie(stripe_id text, object text, tbl regclass, uid text, job bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.stripe_ties AS t (stripe_id, object, profile_table, user_id, job_id)
    VALUES (_tie.stripe_id, _tie.object, tbl, uid, job)
    ON CONFLICT ON CONSTRAINT stripe_ties_pkey DO NOTHING;
    RETURN FOUND OR onboarding._tied(_tie.stripe_id, tbl, uid);
END $$;

-- Whether `stripe_id` was made by this extension for the profile `uid` of `tbl`.
CREATE FUNCTION onboarding._tied(stripe_id text, tbl regclass, uid text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM onboarding.stripe_ties t
                    WHERE t.stripe_id = $1 AND t.profile_table = tbl AND t.user_id = uid COLLATE "default")
$$;

-- A creation job made (or adopted) its object: tie it to the job's profile, whatever happens to
-- the object next (written back, or orphaned and compensated).
CREATE FUNCTION onboarding._tie_made_object() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT onboarding._tie(NEW.stripe_id, CASE NEW.kind WHEN 'create_customer' THEN 'customer' ELSE 'account' END,
                           NEW.profile_table, NEW.user_id, NEW.id) THEN
        RAISE WARNING 'onboarding: job % of % user % came back with Stripe object %, which this extension made for another profile',
                NEW.id, NEW.profile_table, NEW.user_id, NEW.stripe_id
            USING HINT = 'It is not acted on for this profile. See onboarding.audit_mismatches().';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_tie_made_object AFTER UPDATE OF state ON onboarding.jobs
    FOR EACH ROW WHEN (NEW.kind IN ('create_customer', 'create_connect_account') AND NEW.stripe_id IS NOT NULL
                       AND NEW.state IN ('succeeded', 'orphaned') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION onboarding._tie_made_object();

-- Says that a profile's column names a Stripe object this extension did not make for that
-- profile, and that `action` was not done: a WARNING and an event in sequence(); the profile shows
-- in audit_mismatches. Nothing says whom the object belongs to.
CREATE FUNCTION onboarding._refuse_untied(tbl regclass, uid text, stripe_id text, action text, job bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE WARNING 'onboarding: % user % names Stripe object %, which this extension did not make for this profile: % not done',
            tbl, uid, left(stripe_id, 60), action
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'The extension acts only on the objects it made for a profile, never because a column names one. '
                     'See onboarding.audit_mismatches().';
    INSERT INTO onboarding.events (job_id, user_id, step, detail)
    VALUES (job, uid, 'untied_object_refused',
            jsonb_build_object('stripe_id', left(stripe_id, 255), 'table', tbl::text, 'action', action));
END $$;

-- The objects made before 0.3.0: those of the creation jobs retention has kept (the first job
-- that named each), then those that one profile alone links among every attached table (their
-- jobs pruned). An object two profiles link is left untied: audit_mismatches shows both, and
-- nothing is done to it until a person decides.
INSERT INTO onboarding.stripe_ties (stripe_id, object, profile_table, user_id, job_id, tied_at)
SELECT DISTINCT ON (j.stripe_id) j.stripe_id, CASE j.kind WHEN 'create_customer' THEN 'customer' ELSE 'account' END,
       j.profile_table, j.user_id, j.id, coalesce(j.finished_at, j.updated_at)
  FROM onboarding.jobs j
 WHERE j.kind IN ('create_customer', 'create_connect_account') AND j.stripe_id IS NOT NULL
   AND j.state IN ('succeeded', 'orphaned')
 ORDER BY j.stripe_id, j.id;
INSERT INTO onboarding.stripe_ties (stripe_id, object, profile_table, user_id)
SELECT c.account_id, 'account', c.profile_table, c.user_id FROM onboarding.connect_accounts c
ON CONFLICT ON CONSTRAINT stripe_ties_pkey DO NOTHING;
DO $$
DECLARE
    a onboarding.attachments;
    -- (table, user id, object, stripe id) of every profile link, as json: no temporary table in an
    -- extension script.
    links jsonb := '[]';
BEGIN
    FOR a IN SELECT * FROM onboarding.attachments LOOP
        BEGIN
            links := links || coalesce((
                SELECT jsonb_agg(jsonb_build_array(a.profile_table::oid, r[1], k.object, k.stripe_id))
                  FROM onboarding._as_owner(a.profile_table,
                           format('SELECT t.%1$I::text, t.%2$I::text, %3$s FROM %4$s t WHERE t.%2$I IS NOT NULL%5$s',
                                  a.id_column, a.customer_column,
                                  coalesce('t.' || quote_ident(a.connect_account_column) || '::text', 'NULL::text'),
                                  a.profile_table,
                                  coalesce(' OR t.' || quote_ident(a.connect_account_column) || ' IS NOT NULL', ''))) r
                 CROSS JOIN LATERAL (VALUES ('customer', r[2]), ('account', r[3])) k(object, stripe_id)
                 WHERE k.stripe_id IS NOT NULL), '[]');
        EXCEPTION WHEN query_canceled OR assert_failure OR OTHERS THEN
            RAISE WARNING 'onboarding: the Stripe objects % links could not be read, so none of them is tied: %',
                    a.profile_table, left(SQLERRM, 200)
                USING HINT = 'Their email syncs, deletions and account links are refused until they are; see audit_mismatches().';
        END;
    END LOOP;
    INSERT INTO onboarding.stripe_ties (stripe_id, object, profile_table, user_id)
    SELECT l->>3, min(l->>2), min((l->>0)::oid)::regclass, min(l->>1)
      FROM jsonb_array_elements(links) l
     GROUP BY l->>3 HAVING count(*) = 1
    ON CONFLICT ON CONSTRAINT stripe_ties_pkey DO NOTHING;
END $$;

REVOKE EXECUTE ON FUNCTION onboarding._tie(text, text, regclass, text, bigint), onboarding._tied(text, regclass, text),
    onboarding._tie_made_object(), onboarding._refuse_untied(regclass, text, text, text, bigint) FROM PUBLIC;
REVOKE ALL ON onboarding.stripe_ties FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- 16. Connect is optional: a Stripe account that is not a Connect platform (or a key without
--     Connect's permissions) still gets customers and audits. A snapshot whose accounts Stripe
--     refused to list says why (stripe_snapshots.accounts_not_listed_why, section 11), and the
--     audits say what they could not check instead of failing.
------------------------------------------------------------------------------------------------

-- Stripe customers and Connect accounts carrying a metadata.user_id that no profile has, or whose
-- profile links another object. (Objects without metadata.user_id were not made by this extension.)
CREATE OR REPLACE FUNCTION onboarding.audit_orphans(refresh boolean DEFAULT true)
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
    -- What could not be looked at is said, not taken for "nothing wrong".
    RETURN QUERY
        SELECT 'account', NULL::text, NULL::text, 'not checked: ' || onboarding._accounts_not_listed_why(snap)
         WHERE onboarding._accounts_not_listed_why(snap) IS NOT NULL
           AND (EXISTS (SELECT FROM onboarding.connect_accounts) OR EXISTS (SELECT FROM onboarding.attachments a
                                                                            WHERE a.connect_policy <> 'never'));
END $$;

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
