-- Monthly cost estimate per service: list price of its power × scale (USD, compute only; disabled services included).
-- params: prices={sql_dir}/lightsail_container_prices.csv
-- The price list is data: sql/lightsail_container_prices.csv (power, usd_per_node_month, source, as_of).
-- A power missing from the price list gives NULL prices, never a silent 0.
WITH prices AS (
    SELECT power, usd_per_node_month, as_of
    FROM read_csv(
        $prices,
        header = true,
        delim = ',',
        columns = {
            'power': 'VARCHAR',
            'usd_per_node_month': 'DECIMAL(10,2)',
            'source': 'VARCHAR',
            'as_of': 'DATE'
        }
    )
)
SELECT
    s.account_id,
    s.account_name,
    s.region,
    s.service_name,
    s.state,
    s.is_disabled,
    s.power,
    s.scale,
    p.usd_per_node_month,
    p.usd_per_node_month * s.scale AS usd_per_month,
    p.as_of AS price_as_of
FROM latest_container_services AS s
LEFT JOIN prices AS p ON p.power = s.power
ORDER BY usd_per_month DESC NULLS FIRST, s.account_id, s.region, s.service_name
