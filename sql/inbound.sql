-- onboarding: Stripe back into Postgres. A worker reads Stripe's Events API from a stored cursor
-- (src/maintenance/events.rs; no webhook endpoint) and keeps the readiness of the Connect accounts
-- this extension created here, for applications to read cheaply (account_ready, in RLS policies)
-- or to hear about (NOTIFY onboarding_accounts).

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
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Its table's model (attachments.stripe_objects): an accounts_v2 Account is read on
    -- /v2/core/accounts and heard of through v2 thin events; deauthorized_at is when it was closed.
    stripe_objects text NOT NULL DEFAULT 'v1' CHECK (stripe_objects IN ('v1', 'accounts_v2'))
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
    events_applied bigint NOT NULL DEFAULT 0,
    -- The v2 thin events (GET /v2/core/events, read while an accounts_v2 table is attached): the
    -- `created` (Unix milliseconds) of the newest one read; the next read starts there (ids
    -- already applied are skipped). NULL: none read yet (start now, reading every v2 Account).
    v2_events_since bigint
);
INSERT INTO onboarding.events_cursor DEFAULT VALUES;

-- A Connect account job that succeeded: its account is followed from now on.
CREATE FUNCTION onboarding._follow_account() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id, stripe_objects)
    VALUES (NEW.stripe_id, NEW.profile_table, NEW.user_id,
            coalesce((SELECT a.stripe_objects FROM onboarding.attachments a WHERE a.profile_table = NEW.profile_table),
                     'v1'))
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
-- read (two events of one second); and for Accounts v2, whether to read v2 thin events (an
-- accounts_v2 table is attached), from when (Unix milliseconds; NULL: none read yet), and which of
-- the accounts to read are v2 Accounts. Otherwise the seconds until the next poll is due, never
-- more than `every` (onboarding.events_poll_interval: lowered by a reload, it applies at once).
CREATE FUNCTION onboarding._events_poll_begin(refresh_at_most integer, every interval)
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
-- core/src/inbound.rs). A change of readiness is announced on channel onboarding_accounts at
-- commit (unless onboarding.notify_account_changes is off) with the table's name as the only
-- payload: any role may LISTEN, and any role (a table owner's trigger included) may NOTIFY on any
-- channel, so a notification is a hint to call account_ready/account_status, never an answer. A
-- change of what Stripe says is logged as a stripe_account_updated event (sequence()).
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

-- How long a profile write that must wait (its row or table held) waits before the next try: a
-- second, doubling with each try, at most a minute. It never holds the head of the queue.
CREATE FUNCTION onboarding._profile_write_backoff(attempts integer) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(interval '1 second' * power(2, least(attempts, 6)), interval '1 minute');

-- Writes the readiness of up to `at_most` accounts whose profile is behind (at most `per_table`
-- of one table) to the profile columns its table named (attach's readiness_columns), each on its
-- own (a subtransaction), as the table's owner (onboarding._as_owner; the worker waits 50 ms for
-- a lock at most). A profile row or table another transaction holds is tried again later, backing
-- off (_profile_write_backoff); one the table refuses (its trigger fails or asserts, a statement
-- times out) is given up with a WARNING. A table that timed out or was held gets no more writes
-- this time: one table's slow trigger delays only its own profiles. Returns how many wait.
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

-- The v2 thin events were read up to `since` (Unix milliseconds: the newest one's `created`, or
-- when the first read began); with `refresh_all`, every v2 Account is read at the next polls
-- (the first read, a cursor past Stripe's 30 days, more events than one poll reads).
CREATE FUNCTION onboarding._v2_events_read(since bigint, refresh_all boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c SET v2_events_since = greatest(c.v2_events_since, since)
     WHERE c.polling_pid = pg_backend_pid();
    IF refresh_all THEN
        UPDATE onboarding.connect_accounts a SET refresh_due = true
         WHERE a.stripe_objects = 'accounts_v2' AND NOT a.refresh_due;
    END IF;
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

------------------------------------------------------------------------------------------------
-- Customers changed in Stripe outside the extension (the Dashboard, another API client): deleted,
-- or their email changed. What a table does about it is its own setting (set_stripe_change_policy).
------------------------------------------------------------------------------------------------

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

-- v2 thin events about Accounts (`accounts`, each with the idempotency key of the request that
-- caused it, NULL for a change made in the Dashboard): an accounts_v2 table's Account, the
-- profile's customer, changed outside the extension (its contact email, or closed) is read at the
-- next poll, and what it says then goes through the table's change policy as a v1 customer's
-- change does (_record_customer_changes, _handle_customer_changes). The extension's own requests
-- (a job's key) change nothing to look at. Returns how many are to be read.
CREATE FUNCTION onboarding._v2_customers_changed(accounts text[], keys text[]) RETURNS integer
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

-- Applies each table's policy to up to `at_most` recorded changes not handled yet (at most
-- `per_table` of one table), each on its own (a subtransaction). The profile is the one this
-- extension made the customer for (sql/ties.sql), read and written as its table's owner
-- (onboarding._as_owner; the worker waits 50 ms for a lock at most), and only if it still links the
-- customer: no other table is looked in, so no other table's schema, policies or locks decide the
-- outcome. A change whose profile row or table another transaction holds is tried again later,
-- backing off (_profile_write_backoff); one the table refuses (its trigger fails or asserts, a
-- statement times out) is recorded as failed. A table that timed out or was held gets no more
-- changes this time. Returns how many wait.
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
-- (greatest() skips NULLs: "none waits" is kept apart from "due now" before it is applied.)
CREATE FUNCTION onboarding._profile_writes_due_in() RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN due IS NOT NULL THEN greatest(extract(epoch FROM due - now()), 0)::float8 END
      FROM (SELECT least(
               (SELECT min(c.profile_retry_at) FROM onboarding.connect_accounts c WHERE c.profile_behind),
               (SELECT min(x.next_attempt_at) FROM onboarding.customer_changes x WHERE NOT x.handled)) AS due) next
$$;
