-- Idle services: disabled, without an active current deployment, or with CPU below cpu_idle_pct for the whole utilization window (every datapoint's maximum); with what they cost a month at the run's prices.
-- params: cpu_idle_pct=2
-- Reads the latest_* views and, for CPU and prices, the service_utilization and
-- container_powers of each account × region's newest good scan (collect --usage). A service
-- without CPU datapoints (no_datapoints, or collected without --usage) is judged on the first
-- two reasons only: no data is not near-zero CPU. The price is the service's power in that
-- run's container_powers, by its powerId, else its name (view latest_service_powers);
-- usd_per_month is NULL when there is none (monthly_cost prices it from the bundled list).
WITH cpu AS (
    SELECT u.run_id, u.account_id, u.region, u.service_name,
        max(u.maximum) AS cpu_max_pct,
        count(u.maximum) AS cpu_datapoints
    FROM service_utilization AS u
    JOIN latest_scans AS l
        ON u.run_id = l.run_id AND u.account_id = l.account_id AND u.region = l.region
    WHERE u.metric = 'CPUUtilization' AND u.status = 'ok' AND u.maximum IS NOT NULL
    GROUP BY u.run_id, u.account_id, u.region, u.service_name
),
active AS (
    SELECT DISTINCT account_id, region, service_name
    FROM latest_deployments
    WHERE slot = 'current' AND state = 'ACTIVE'
),
judged AS (
    SELECT s.account_id, s.account_name, s.region, s.service_name, s.state, s.power, s.scale,
        p.price_per_month * s.scale AS usd_per_month,
        coalesce(s.is_disabled, false) AS disabled,
        a.service_name IS NULL AS no_active_deployment,
        coalesce(c.cpu_max_pct < CAST($cpu_idle_pct AS DOUBLE), false) AS cpu_idle,
        c.cpu_max_pct,
        coalesce(c.cpu_datapoints, 0) AS cpu_datapoints
    FROM latest_container_services AS s
    LEFT JOIN active AS a
        ON a.account_id = s.account_id AND a.region = s.region AND a.service_name = s.service_name
    LEFT JOIN cpu AS c
        ON c.run_id = s.run_id AND c.account_id = s.account_id AND c.region = s.region
        AND c.service_name = s.service_name
    LEFT JOIN latest_service_powers AS p
        ON p.run_id = s.run_id AND p.account_id = s.account_id AND p.region = s.region
        AND p.service_name = s.service_name
)
SELECT
    account_id,
    account_name,
    region,
    service_name,
    state,
    power,
    scale,
    round(usd_per_month, 2) AS usd_per_month,
    disabled,
    no_active_deployment,
    cpu_idle,
    round(cpu_max_pct, 2) AS cpu_max_pct,
    cpu_datapoints,
    concat_ws(', ',
        CASE WHEN disabled THEN 'disabled' END,
        CASE WHEN no_active_deployment THEN 'no active deployment' END,
        CASE WHEN cpu_idle THEN 'CPU below ' || $cpu_idle_pct || '% all window' END
    ) AS reasons
FROM judged
WHERE disabled OR no_active_deployment OR cpu_idle
ORDER BY usd_per_month DESC NULLS LAST, account_id, region, service_name
