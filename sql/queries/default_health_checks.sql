-- Public endpoints whose health check is left on the defaults (healthy 2, unhealthy 2, timeout 2 s, interval 5 s, path '/', success codes 200-499).
-- A field the API left out counts as its default.
SELECT
    account_id,
    region,
    service_name,
    slot,
    version,
    state,
    public_endpoint_container_name AS endpoint_container,
    public_endpoint_container_port AS endpoint_port
FROM latest_deployments
WHERE public_endpoint_container_name IS NOT NULL
  AND coalesce(health_check_healthy_threshold, 2) = 2
  AND coalesce(health_check_unhealthy_threshold, 2) = 2
  AND coalesce(health_check_timeout_seconds, 2) = 2
  AND coalesce(health_check_interval_seconds, 5) = 5
  AND coalesce(health_check_path, '/') = '/'
  AND coalesce(health_check_success_codes, '200-499') = '200-499'
ORDER BY account_id, region, service_name, slot
