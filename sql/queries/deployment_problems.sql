-- Deployments that FAILED or are stuck ACTIVATING (older than $stuck_minutes when collected), and next deployments still pending.
-- params: stuck_minutes=30
-- problem: 'failed' | 'stuck_activating' | 'pending_next' (a next deployment, ACTIVATING for less than stuck_minutes).
WITH d AS (
    SELECT
        *,
        round(epoch(collected_at - created_at) / 3600, 1) AS age_hours,
        created_at < collected_at - to_minutes(CAST($stuck_minutes AS BIGINT)) AS old
    FROM latest_deployments
)
SELECT
    account_id,
    region,
    service_name,
    slot,
    version,
    state,
    created_at,
    age_hours,
    CASE
        WHEN state = 'FAILED' THEN 'failed'
        WHEN state = 'ACTIVATING' AND old THEN 'stuck_activating'
        ELSE 'pending_next'
    END AS problem
FROM d
WHERE state = 'FAILED'
   OR (state = 'ACTIVATING' AND old)
   OR slot = 'next'
ORDER BY account_id, region, service_name, slot
