-- onboarding 0.1.0 -> 0.2.0, run by ALTER EXTENSION onboarding UPDATE (after the 0.2.0 package is
-- installed and PostgreSQL restarted). Keeps every job, event, intake row and attachment.
-- Until this commits, the 0.2.0 workers wait (src/release.rs); its commit wakes them.
\echo Use "ALTER EXTENSION onboarding UPDATE TO '0.2.0'" to load this file. \quit

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
