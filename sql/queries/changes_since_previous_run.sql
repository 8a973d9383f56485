-- What changed since the previous run: services added, removed, or with a new state, power or scale, per account × region of the current fleet between its two newest good scans.
-- The good scans are the view good_scans (scanned ok in a run whose every shard is 'complete' or 'partial'), the newer one is what the latest_* views show (latest_scans): pairs that left the fleet, and pairs scanned ok only once, show nothing (as `inventory diff`).
WITH good AS (
    SELECT
        account_id,
        region,
        run_id,
        row_number() OVER (
            PARTITION BY account_id, region
            ORDER BY run_started_at DESC, run_id DESC
        ) AS rank
    FROM good_scans
),
pairs AS (
    SELECT n.account_id, n.region, n.run_id AS new_run, o.run_id AS old_run
    FROM good AS n
    JOIN latest_scans AS l
      ON l.account_id = n.account_id AND l.region = n.region AND l.run_id = n.run_id
    JOIN good AS o
      ON o.account_id = n.account_id AND o.region = n.region AND o.rank = 2
    WHERE n.rank = 1
),
new AS (
    SELECT p.account_id, p.region, p.old_run, p.new_run, c.service_name, c.state, c.power, c.scale
    FROM pairs AS p
    JOIN container_services AS c
      ON c.run_id = p.new_run AND c.account_id = p.account_id AND c.region = p.region
),
old AS (
    SELECT p.account_id, p.region, p.old_run, p.new_run, c.service_name, c.state, c.power, c.scale
    FROM pairs AS p
    JOIN container_services AS c
      ON c.run_id = p.old_run AND c.account_id = p.account_id AND c.region = p.region
)
SELECT
    coalesce(n.account_id, o.account_id) AS account_id,
    coalesce(n.region, o.region) AS region,
    coalesce(n.service_name, o.service_name) AS service_name,
    CASE
        WHEN o.service_name IS NULL THEN 'added'
        WHEN n.service_name IS NULL THEN 'removed'
        ELSE 'changed'
    END AS change,
    o.state AS old_state,
    n.state AS new_state,
    o.power AS old_power,
    n.power AS new_power,
    o.scale AS old_scale,
    n.scale AS new_scale,
    coalesce(n.old_run, o.old_run) AS previous_run_id,
    coalesce(n.new_run, o.new_run) AS run_id
FROM new AS n
FULL OUTER JOIN old AS o
  ON o.account_id = n.account_id AND o.region = n.region AND o.service_name = n.service_name
WHERE o.service_name IS NULL
   OR n.service_name IS NULL
   OR o.state IS DISTINCT FROM n.state
   OR o.power IS DISTINCT FROM n.power
   OR o.scale IS DISTINCT FROM n.scale
ORDER BY account_id, region, service_name
