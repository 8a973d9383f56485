-- Containers on registry images tagged `latest` or untagged (no tag, no digest): what runs can change without a deployment.
-- A registry image reference is [host[:port]/]path[:tag][@digest]; the tag is after the last ':' of the last path part.
WITH refs AS (
    SELECT
        *,
        regexp_extract(image, '[^/]*$') AS last_part
    FROM latest_containers
    WHERE image_source = 'registry'
)
SELECT
    account_id,
    region,
    service_name,
    slot,
    deployment_version,
    container_name,
    image,
    CASE WHEN contains(last_part, ':') THEN 'latest' ELSE 'untagged' END AS problem
FROM refs
WHERE NOT contains(last_part, '@')
  AND (NOT contains(last_part, ':') OR split_part(last_part, ':', 2) = 'latest')
ORDER BY account_id, region, service_name, slot, container_name
