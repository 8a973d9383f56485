-- Over-provisioned services: peak CPU and memory over the utilization window both below the thresholds, with the cheapest active power × scale of their region that keeps the headroom, the monthly saving at the run's prices, and the evidence (maxima, datapoints).
-- params: max_cpu_pct=20, max_memory_pct=20, headroom_pct=40
-- Reads each account × region's newest good scan (latest_scans) and that run's
-- service_utilization and container_powers (collect --usage). Only services with datapoints
-- of both metrics (status 'ok') are judged: a service without them (no_datapoints,
-- disabled, or collected without --usage) is never listed here, whatever it costs.
-- Lightsail's CPUUtilization / MemoryUtilization are "the average percentage ... across all
-- nodes", so the capacity in use at the peak is max% × cpu_count (ram_size_gb) × scale, and
-- on power P at scale N it would be that / (P's cpu_count (ram) × N). The recommendation
-- is the cheapest active power and scale (1 .. the current scale) whose projected peaks both
-- stay at or below 100 - headroom_pct percent; never dearer than now: when nothing cheaper
-- fits, the row says keep and saves 0.
WITH params AS (
    SELECT
        CAST($max_cpu_pct AS DOUBLE) AS max_cpu_pct,
        CAST($max_memory_pct AS DOUBLE) AS max_memory_pct,
        100 - CAST($headroom_pct AS DOUBLE) AS target_pct
),
powers AS (
    SELECT run_id, region, name,
        max(price_per_month) AS price_per_month,
        max(cpu_count) AS cpu_count,
        max(ram_size_gb) AS ram_size_gb,
        bool_or(is_active) AS is_active
    FROM container_powers
    GROUP BY run_id, region, name
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
        p.price_per_month * s.scale AS usd_per_month,
        p.cpu_count * s.scale * k.cpu_max_pct AS cpu_in_use,
        p.ram_size_gb * s.scale * k.memory_max_pct AS memory_in_use,
        k.cpu_max_pct, k.memory_max_pct, k.cpu_datapoints, k.memory_datapoints,
        k.window_start, k.window_end
    FROM latest_container_services AS s
    JOIN peaks AS k
        ON k.run_id = s.run_id AND k.account_id = s.account_id AND k.region = s.region
        AND k.service_name = s.service_name
    JOIN powers AS p ON p.run_id = s.run_id AND p.region = s.region AND p.name = s.power
    CROSS JOIN params AS x
    WHERE NOT coalesce(s.is_disabled, false)
        AND k.cpu_datapoints > 0 AND k.memory_datapoints > 0
        AND k.cpu_max_pct < x.max_cpu_pct AND k.memory_max_pct < x.max_memory_pct
),
options AS (
    SELECT f.run_id, f.account_id, f.region, f.service_name,
        c.name AS power, n.scale,
        c.price_per_month * n.scale AS usd_per_month,
        f.cpu_in_use / (c.cpu_count * n.scale) AS cpu_pct,
        f.memory_in_use / (c.ram_size_gb * n.scale) AS memory_pct
    FROM flagged AS f
    JOIN powers AS c ON c.run_id = f.run_id AND c.region = f.region AND c.is_active
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
        ORDER BY usd_per_month, scale DESC, power
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
    CASE WHEN b.power IS NULL THEN 'keep' ELSE 'downsize' END AS action,
    coalesce(b.power, f.power) AS recommended_power,
    coalesce(b.scale, f.scale) AS recommended_scale,
    round(coalesce(b.usd_per_month, f.usd_per_month), 2) AS recommended_usd_per_month,
    round(coalesce(b.cpu_pct, f.cpu_max_pct), 2) AS projected_cpu_max_pct,
    round(coalesce(b.memory_pct, f.memory_max_pct), 2) AS projected_memory_max_pct,
    round(f.usd_per_month - coalesce(b.usd_per_month, f.usd_per_month), 2) AS usd_saving_per_month
FROM flagged AS f
LEFT JOIN best AS b
    ON b.run_id = f.run_id AND b.account_id = f.account_id AND b.region = f.region
    AND b.service_name = f.service_name
ORDER BY usd_saving_per_month DESC, f.account_id, f.region, f.service_name
