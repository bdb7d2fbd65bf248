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
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connect_accounts_by_user ON onboarding.connect_accounts (user_id);
CREATE INDEX connect_accounts_to_refresh ON onboarding.connect_accounts (account_id) WHERE refresh_due;

-- Every event applied, so that none is applied twice (a page read again after a crash, a
-- cursor moved back). Pruned with the jobs (onboarding.prune), once past Stripe's 30 days.
CREATE TABLE onboarding.stripe_events_applied (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    created timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_applied_by_time ON onboarding.stripe_events_applied (applied_at);

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
-- enabled, details submitted, not disabled or disconnected), as Stripe last said. One index
-- look-up, so it can sit in RLS policies; false for a user without an account. `user_id` of any
-- type (uuid, bigint, text), compared as text like jobs.user_id.
CREATE FUNCTION onboarding.account_ready(user_id anyelement) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(bool_or(c.ready), false) FROM onboarding.connect_accounts c WHERE c.user_id = $1::text
$$;

-- The user's Connect accounts with what Stripe last said of them.
CREATE FUNCTION onboarding.account_status(user_id anyelement)
RETURNS TABLE (account_id text, profile_table regclass, ready boolean, charges_enabled boolean,
               payouts_enabled boolean, details_submitted boolean, requirements_currently_due text[],
               disabled_reason text, deauthorized_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.account_id, c.profile_table, c.ready, c.charges_enabled, c.payouts_enabled, c.details_submitted,
           c.requirements_currently_due, c.disabled_reason, c.deauthorized_at, c.updated_at
      FROM onboarding.connect_accounts c WHERE c.user_id = $1::text ORDER BY c.account_id
$$;

-- The events reader takes its turn, when a poll is due and no other worker is polling (or the
-- one that was has been gone a minute): `polling`, with the cursor, the accounts to read again
-- and the seconds since the last account link. Otherwise the seconds until the next poll is due.
CREATE FUNCTION onboarding._events_poll_begin(refresh_at_most integer)
RETURNS TABLE (polling boolean, due_in double precision, last_event_id text, accounts_to_refresh text[],
               since_link double precision)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c SET polling_pid = pg_backend_pid(), polling_since = now()
     WHERE c.next_poll_at <= now() AND (c.polling_pid IS NULL OR c.polling_since < now() - interval '1 minute');
    polling := FOUND;
    SELECT greatest(extract(epoch FROM c.next_poll_at - now()), 0), c.last_event_id,
           extract(epoch FROM now() - c.last_link_at)
      INTO due_in, last_event_id, since_link
      FROM onboarding.events_cursor c;
    IF polling THEN
        accounts_to_refresh := ARRAY(SELECT a.account_id FROM onboarding.connect_accounts a WHERE a.refresh_due
                                      ORDER BY a.account_id LIMIT refresh_at_most);
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
        before AS (
            SELECT c.account_id, c.ready,
                   (c.charges_enabled, c.payouts_enabled, c.details_submitted, c.requirements_currently_due,
                    c.disabled_reason, c.deauthorized_at)::text AS said
              FROM onboarding.connect_accounts c JOIN incoming i USING (account_id)),
        updated AS (
            UPDATE onboarding.connect_accounts c
               SET charges_enabled = CASE WHEN i.deauthorized THEN c.charges_enabled ELSE coalesce((i.s->>'charges_enabled')::boolean, false) END,
                   payouts_enabled = CASE WHEN i.deauthorized THEN c.payouts_enabled ELSE coalesce((i.s->>'payouts_enabled')::boolean, false) END,
                   details_submitted = CASE WHEN i.deauthorized THEN c.details_submitted ELSE coalesce((i.s->>'details_submitted')::boolean, false) END,
                   requirements_currently_due = CASE WHEN i.deauthorized THEN c.requirements_currently_due
                       ELSE ARRAY(SELECT jsonb_array_elements_text(coalesce(i.s->'requirements_currently_due', '[]'))) END,
                   disabled_reason = CASE WHEN i.deauthorized THEN c.disabled_reason ELSE i.s->>'disabled_reason' END,
                   deauthorized_at = CASE WHEN i.deauthorized THEN coalesce(c.deauthorized_at, to_timestamp(i.as_of)) ELSE c.deauthorized_at END,
                   as_of = greatest(c.as_of, i.as_of),
                   refresh_due = coalesce((i.s->>'refresh_due')::boolean, false),
                   updated_at = now()
              FROM incoming i
             WHERE c.account_id = i.account_id AND (c.as_of IS NULL OR c.as_of <= i.as_of)
            RETURNING c.account_id, c.user_id, c.profile_table, c.ready, c.charges_enabled, c.payouts_enabled,
                      c.details_submitted, c.requirements_currently_due, c.disabled_reason, c.deauthorized_at,
                      (c.charges_enabled, c.payouts_enabled, c.details_submitted, c.requirements_currently_due,
                       c.disabled_reason, c.deauthorized_at)::text AS says)
        SELECT u.*, b.ready AS was_ready, b.said FROM updated u JOIN before b USING (account_id)
    LOOP
        written := written + 1;
        IF changed.says IS DISTINCT FROM changed.said THEN
            -- The user's sequence() shows it (an event outside any job).
            INSERT INTO onboarding.events (job_id, user_id, step, detail)
            VALUES (NULL, changed.user_id, 'stripe_account_updated', jsonb_build_object(
                'account_id', changed.account_id, 'ready', changed.ready,
                'charges_enabled', changed.charges_enabled, 'payouts_enabled', changed.payouts_enabled,
                'details_submitted', changed.details_submitted,
                'requirements_currently_due', to_jsonb(changed.requirements_currently_due),
                'disabled_reason', changed.disabled_reason, 'deauthorized', changed.deauthorized_at IS NOT NULL));
        END IF;
        IF changed.ready IS DISTINCT FROM changed.was_ready THEN
            PERFORM pg_notify('onboarding_accounts', jsonb_build_object(
                'user_id', changed.user_id, 'account_id', changed.account_id,
                'table', changed.profile_table::text, 'ready', changed.ready)::text);
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
-- `next_in`, and `applied` more events count as applied. `lost`: the cursor was past Stripe's
-- retention and starts again at the newest event.
CREATE FUNCTION onboarding._events_poll_end(new_cursor text, new_cursor_created bigint, applied integer,
                                            next_in interval, lost boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor c
       SET last_event_id = CASE WHEN lost THEN new_cursor ELSE coalesce(new_cursor, c.last_event_id) END,
           last_event_created = CASE WHEN new_cursor IS NULL AND NOT lost THEN c.last_event_created
                                     ELSE to_timestamp(new_cursor_created) END,
           polled_at = now(), next_poll_at = now() + next_in,
           polling_pid = NULL, polling_since = NULL,
           cursor_lost_at = CASE WHEN lost THEN now() ELSE c.cursor_lost_at END,
           events_applied = c.events_applied + applied
     WHERE c.polling_pid = pg_backend_pid();
    -- Ids past Stripe's 30 days cannot come again.
    DELETE FROM onboarding.stripe_events_applied e
     WHERE e.event_id = ANY (ARRAY(SELECT o.event_id FROM onboarding.stripe_events_applied o
                                    WHERE o.applied_at < now() - interval '31 days' LIMIT 1000));
END $$;

-- An account link was issued: its owner may finish onboarding in minutes, so poll soon and often.
CREATE FUNCTION onboarding._account_link_issued(fast interval) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE onboarding.events_cursor SET last_link_at = now(), next_poll_at = least(next_poll_at, now() + fast);
END $$;
