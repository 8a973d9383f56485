-- Over-provisioned services: peak CPU and memory over the utilization window both below the thresholds, with the cheapest active power × scale of their region that keeps the headroom, the monthly saving at the run's prices, and the evidence (maxima, datapoints).
-- params: max_cpu_pct=20, max_memory_pct=20, headroom_pct=40
-- Reads each account × region's newest good scan (latest_scans) and that run's
-- service_utilization and container_powers (collect --usage). Only services with datapoints
-- of both metrics (status 'ok') are judged: a service without them (no_datapoints,
-- disabled, or collected without --usage) is never listed here, whatever it costs. Nor is a
-- service that is not in service: only states RUNNING, DEPLOYING (a new deployment launching
-- while the current one serves: the power does not change) and READY, and only with a
-- current deployment ACTIVE (AWS's READY has none: idle_services lists those); PENDING,
-- UPDATING (its power or scale is being changed), DELETING and DISABLED never.
-- Lightsail's CPUUtilization / MemoryUtilization are "the average percentage ... across all
-- nodes", so the capacity in use at the peak is max% × cpu_count (ram_size_gb) × scale, and
-- on power P at scale N it would be that / (P's cpu_count (ram) × N). The recommendation
-- is the cheapest active power id and scale (1 .. the current scale) whose projected peaks
-- both stay at or below 100 - headroom_pct percent; never dearer than now: when nothing
-- cheaper fits, the row says keep and saves 0. The service's own power is found by
-- latest_service_powers (its powerId, else its name); when that run has no powers for the
-- region, or none matches, the row says unpriced, with the price and recommendation NULL.
WITH params AS (
    SELECT
        CAST($max_cpu_pct AS DOUBLE) AS max_cpu_pct,
        CAST($max_memory_pct AS DOUBLE) AS max_memory_pct,
        100 - CAST($headroom_pct AS DOUBLE) AS target_pct
),
active AS (
    SELECT DISTINCT account_id, region, service_name
    FROM latest_deployments
    WHERE slot = 'current' AND state = 'ACTIVE'
),
peaks AS (
    SELECT u.run_id, u.account_id, u.region, u.service_name,
        max(u.maximum) FILTER (WHERE u.metric = 'CPUUtilization') AS cpu_max_pct,
        count(u.maximum) FILTER (WHERE u.metric = 'CPUUtilization') AS cpu_datapoints,
        max(u.maximum) FILTER (WHERE u.metric = 'MemoryUtilization') AS memory_max_pct,
        count(u.maximum) FILTER (WHERE u.metric = 'MemoryUtilization') AS memory_datapoints,
        min(u.window_start) AS window_start,
        max(u.window_end) AS window_end
    FROM service_utilization AS u
    JOIN latest_scans AS l
        ON u.run_id = l.run_id AND u.account_id = l.account_id AND u.region = l.region
    WHERE u.status = 'ok' AND u.maximum IS NOT NULL
    GROUP BY u.run_id, u.account_id, u.region, u.service_name
),
flagged AS (
    SELECT s.run_id, s.account_id, s.account_name, s.region, s.service_name, s.power, s.scale,
        s.power_id, p.power_id AS priced_power_id,
        coalesce(p.price_per_month IS NOT NULL AND p.cpu_count > 0 AND p.ram_size_gb > 0, false)
            AS priced,
        p.price_per_month * s.scale AS usd_per_month,
        p.cpu_count * s.scale * k.cpu_max_pct AS cpu_in_use,
        p.ram_size_gb * s.scale * k.memory_max_pct AS memory_in_use,
        k.cpu_max_pct, k.memory_max_pct, k.cpu_datapoints, k.memory_datapoints,
        k.window_start, k.window_end
    FROM latest_container_services AS s
    JOIN peaks AS k
        ON k.run_id = s.run_id AND k.account_id = s.account_id AND k.region = s.region
        AND k.service_name = s.service_name
    JOIN active AS a
        ON a.account_id = s.account_id AND a.region = s.region AND a.service_name = s.service_name
    JOIN latest_service_powers AS p
        ON p.run_id = s.run_id AND p.account_id = s.account_id AND p.region = s.region
        AND p.service_name = s.service_name
    CROSS JOIN params AS x
    WHERE NOT coalesce(s.is_disabled, false)
        AND s.state IN ('RUNNING', 'DEPLOYING', 'READY')
        AND k.cpu_datapoints > 0 AND k.memory_datapoints > 0
        AND k.cpu_max_pct < x.max_cpu_pct AND k.memory_max_pct < x.max_memory_pct
),
options AS (
    SELECT f.run_id, f.account_id, f.region, f.service_name,
        c.name AS power, c.power_id, n.scale,
        c.price_per_month * n.scale AS usd_per_month,
        f.cpu_in_use / (c.cpu_count * n.scale) AS cpu_pct,
        f.memory_in_use / (c.ram_size_gb * n.scale) AS memory_pct
    FROM flagged AS f
    JOIN run_powers AS c ON c.run_id = f.run_id AND c.region = f.region AND c.is_active
    CROSS JOIN range(1, f.scale + 1) AS n(scale)
    CROSS JOIN params AS x
    WHERE c.cpu_count > 0 AND c.ram_size_gb > 0
        AND f.cpu_in_use / (c.cpu_count * n.scale) <= x.target_pct
        AND f.memory_in_use / (c.ram_size_gb * n.scale) <= x.target_pct
        AND c.price_per_month * n.scale < f.usd_per_month
),
best AS (
    SELECT *
    FROM options
    QUALIFY row_number() OVER (
        PARTITION BY run_id, account_id, region, service_name
        ORDER BY usd_per_month, scale DESC, power, power_id
    ) = 1
)
SELECT
    f.account_id,
    f.account_name,
    f.region,
    f.service_name,
    f.power,
    f.scale,
    round(f.usd_per_month, 2) AS usd_per_month,
    round(f.cpu_max_pct, 2) AS cpu_max_pct,
    round(f.memory_max_pct, 2) AS memory_max_pct,
    f.cpu_datapoints,
    f.memory_datapoints,
    f.window_start,
    f.window_end,
    CASE WHEN NOT f.priced THEN 'unpriced' WHEN b.power IS NULL THEN 'keep' ELSE 'downsize' END
        AS action,
    CASE WHEN f.priced THEN coalesce(b.power, f.power) END AS recommended_power,
    CASE WHEN f.priced THEN coalesce(b.scale, f.scale) END AS recommended_scale,
    CASE WHEN f.priced THEN round(coalesce(b.usd_per_month, f.usd_per_month), 2) END
        AS recommended_usd_per_month,
    CASE WHEN f.priced THEN round(coalesce(b.cpu_pct, f.cpu_max_pct), 2) END
        AS projected_cpu_max_pct,
    CASE WHEN f.priced THEN round(coalesce(b.memory_pct, f.memory_max_pct), 2) END
        AS projected_memory_max_pct,
    CASE WHEN f.priced THEN round(f.usd_per_month - coalesce(b.usd_per_month, f.usd_per_month), 2)
    END AS usd_saving_per_month,
    f.power_id,
    CASE WHEN f.priced THEN coalesce(b.power_id, f.priced_power_id) END AS recommended_power_id
FROM flagged AS f
LEFT JOIN best AS b
    ON b.run_id = f.run_id AND b.account_id = f.account_id AND b.region = f.region
    AND b.service_name = f.service_name
ORDER BY usd_saving_per_month DESC NULLS LAST, f.account_id, f.region, f.service_name
