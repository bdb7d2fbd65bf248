-- onboarding 0.3.0 -> 0.4.0 (ALTER EXTENSION onboarding UPDATE): every change of 0.4.0's schema
-- and SQL functions, by concern, in the order they land. Nothing yet.

-- The workers go on as soon as this transaction commits.
SELECT onboarding._wake_worker_after_commit();
