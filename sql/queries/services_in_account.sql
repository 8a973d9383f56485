-- The container services of one account, every region, with state, power and scale.
-- params: account
SELECT
    account_id,
    account_name,
    region,
    service_name,
    state,
    power,
    scale,
    is_disabled,
    url,
    created_at
FROM latest_container_services
WHERE account_id = $account
ORDER BY region, service_name
