-- onboarding: which Stripe object the extension made for which profile. The extension acts on an
-- existing Stripe object (syncs its email, deletes it, issues an account link for it, copies what
-- Stripe says of it back to a profile) only through this tie, never because a profile's column
-- names it: a table's owner can write any ID into her own rows, another tenant's included.

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
