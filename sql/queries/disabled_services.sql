-- Disabled container services (is_disabled): still there, serving nothing.
SELECT
    account_id,
    account_name,
    region,
    service_name,
    state,
    power,
    scale,
    created_at
FROM latest_container_services
WHERE is_disabled
ORDER BY account_id, region, service_name
