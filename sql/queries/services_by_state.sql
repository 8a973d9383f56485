-- Container services per account, region and state, with their nodes (sum of scale).
SELECT
    account_id,
    any_value(account_name) AS account_name,
    region,
    state,
    count(*) AS services,
    sum(scale) AS nodes,
    count(*) FILTER (WHERE is_disabled) AS disabled
FROM latest_container_services
GROUP BY account_id, region, state
ORDER BY account_id, region, state
