-- Services with a public endpoint but no custom domain (public_domain_names NULL or empty): reachable only at the default Lightsail URL.
SELECT
    s.account_id,
    s.region,
    s.service_name,
    s.state,
    s.url,
    d.public_endpoint_container_name AS endpoint_container,
    d.public_endpoint_container_port AS endpoint_port,
    s.public_domain_names
FROM latest_container_services AS s
JOIN latest_deployments AS d
  ON d.run_id = s.run_id
 AND d.account_id = s.account_id
 AND d.region = s.region
 AND d.service_name = s.service_name
 AND d.slot = 'current'
WHERE d.public_endpoint_container_name IS NOT NULL
  AND coalesce(len(flatten(map_values(s.public_domain_names))), 0) = 0
ORDER BY s.account_id, s.region, s.service_name
