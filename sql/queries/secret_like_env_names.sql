-- Container environment variable NAMES that look like secrets (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE, ...): names only, never values.
-- params: pattern={secret_like_names}
-- Matching is a case-insensitive substring test, so API_KEY, APIKEY and db_password all match.
-- The default pattern is the collector's own rule (inventory/fingerprint.py, SECRET_NAME_PATTERN),
-- the one that decides which command arguments are fingerprinted.
WITH names AS (
    SELECT
        account_id,
        region,
        service_name,
        slot,
        deployment_version,
        container_name,
        unnest(map_keys(environment)) AS env_name
    FROM latest_containers
)
SELECT
    account_id,
    region,
    service_name,
    slot,
    deployment_version,
    container_name,
    env_name,
    regexp_extract(
        upper(env_name),
        upper($pattern)
    ) AS looks_like
FROM names
WHERE regexp_matches(
    upper(env_name),
    upper($pattern)
)
ORDER BY account_id, region, service_name, slot, container_name, env_name
