-- onboarding: attaching application tables. attach()/detach(), set_connect_policy(), their checks,
-- and the trigger functions they install on a profile table (the insert trigger itself,
-- onboarding._intake_profile, is Rust: src/intake.rs). The triggers enqueue through the helpers
-- of sql/api.sql (_enqueue, _enqueue_for_customer), looked up when they fire.

-- Inlined into its callers (hence no SET clause; every name is qualified).
CREATE FUNCTION onboarding._sync_email_enabled() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.bool(coalesce(pg_catalog.current_setting('onboarding.sync_email', true), 'on'));
$$;

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

-- Row-level AFTER UPDATE OF <email> trigger (only rows whose email changed): the customer follows,
-- if this extension made it for this profile (sql/ties.sql); a column naming any other customer is
-- reported and left alone (its owner could name another tenant's customer and take it over).
-- TG_ARGV: id column, customer column, the attached table's oid (a partitioned table's triggers
-- fire on its partitions; triggers made before 0.3.0 lack it and sit on the attached table itself).
CREATE FUNCTION onboarding._enqueue_email_update() RETURNS trigger
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
-- account) when this extension made it for that profile (sql/ties.sql) and no other row of the
-- table uses it. Off with onboarding.delete_customers_with_profiles = off.
-- TG_ARGV: id, customer and Connect account column ('' when none).
CREATE FUNCTION onboarding._compensate_deleted_profiles() RETURNS trigger
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

-- Checks that `col` exists in `tbl` with one of `allowed` types; returns its type.
CREATE FUNCTION onboarding._column_type(tbl regclass, col name, role text, allowed regtype[]) RETURNS regtype
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

-- Row-level AFTER UPDATE trigger on rows with a customer and no Connect account, for updates of
-- the customer column (which covers the worker's write-back) or of the columns the condition
-- reads: enqueues the account. Under a 'when' policy the job is conditional: the worker checks
-- the condition when it claims it, so the application's UPDATE never waits for a condition.
-- TG_ARGV: the attached table's oid (as for _enqueue_email_update).
CREATE FUNCTION onboarding._enqueue_connect_if_due() RETURNS trigger
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
CREATE FUNCTION onboarding.set_connect_policy(profile_table regclass, policy text, condition text DEFAULT NULL)
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

-- What the Accounts of an accounts_v2 table get: the capabilities requested when the Connect
-- policy adds the merchant and recipient configurations (an empty array leaves one out), and the
-- Dashboard and responsibilities sent when an Account is made. NULL keeps the current value.
-- Applies to what is sent from now on; Accounts made already keep what they were made with.
CREATE FUNCTION onboarding.set_account_options(profile_table regclass, merchant_capabilities text[] DEFAULT NULL,
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

CREATE FUNCTION onboarding._drop_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trigger_name name;
BEGIN
    FOR trigger_name IN
        SELECT tgname FROM pg_trigger
         WHERE tgrelid = tbl
           AND tgname IN ('onboarding_enqueue', 'onboarding_compensate', 'onboarding_sync_email', 'onboarding_connect')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
    END LOOP;
END $$;

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
        a.profile_table, a.id_column, a.customer_column,
        -- An accounts_v2 table's Connect column names the same Account: closed once, as the customer.
        CASE WHEN a.stripe_objects = 'v1' THEN coalesce(a.connect_account_column, '') ELSE '' END);
    EXECUTE format($sql$
        CREATE TRIGGER onboarding_sync_email AFTER UPDATE OF %2$I ON %1$s
        FOR EACH ROW WHEN (OLD.%2$I IS DISTINCT FROM NEW.%2$I)
        EXECUTE FUNCTION onboarding._enqueue_email_update(%3$L, %4$L, %5$L)$sql$,
        a.profile_table, a.email_column, a.id_column, a.customer_column, a.profile_table::oid);
END $$;

-- stripe_objects: 'v1' (a Customer, and an Express account by the Connect policy) or 'accounts_v2'
-- (one Accounts v2 Account: see onboarding.attachments). customer_column defaults to
-- stripe_customer_id for v1 and to stripe_account_id for accounts_v2, whose Account is the customer.
CREATE FUNCTION onboarding.attach(
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

CREATE FUNCTION onboarding.detach(profile_table regclass) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM onboarding._drop_triggers(profile_table);
    DELETE FROM onboarding.intake i WHERE i.profile_table = detach.profile_table;
    DELETE FROM onboarding.attachments a WHERE a.profile_table = detach.profile_table;
    IF NOT FOUND THEN
        RETURN format('onboarding: %s was not attached', profile_table);
    END IF;
    RETURN format('onboarding: detached from %s; its pending jobs will be skipped', profile_table);
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
        -- Its profiles are gone: their accounts are no longer followed (nor read from Stripe daily).
        DELETE FROM onboarding.connect_accounts c WHERE c.profile_table = dropped;
        RAISE NOTICE 'onboarding: %: detached, its waiting jobs cancelled', reason;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'onboarding: could not detach a dropped table: %', SQLERRM
        USING HINT = 'SELECT onboarding.detach(oid) for it by hand.';
END $$;
CREATE EVENT TRIGGER onboarding_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION onboarding._forget_dropped_tables();
