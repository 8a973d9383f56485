-- Container environment variable NAMES that look like secrets (PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL, PRIVATE, ...): names only, never values.
-- Matching is a case-insensitive substring test, so API_KEY, APIKEY and db_password all match.
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
        'PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|KEY|DSN|AUTH'
    ) AS looks_like
FROM names
WHERE regexp_matches(
    upper(env_name),
    'PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|KEY|DSN|AUTH'
)
ORDER BY account_id, region, service_name, slot, container_name, env_name
