-- Containers on registry images versus Lightsail-pushed images, per account, region and deployment slot.
SELECT
    account_id,
    region,
    slot,
    count(*) FILTER (WHERE image_source = 'registry') AS registry_containers,
    count(*) FILTER (WHERE image_source = 'lightsail') AS lightsail_containers,
    count(*) FILTER (WHERE image_source IS NULL) AS no_image,
    count(DISTINCT service_name) AS services
FROM latest_containers
GROUP BY account_id, region, slot
ORDER BY account_id, region, slot
