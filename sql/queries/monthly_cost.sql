-- Monthly cost estimate per service: price of its power × scale (USD, compute only; disabled services included).
-- params: prices={sql_dir}/lightsail_container_prices.csv
-- The price: GetContainerServicePowers' of the service's own run and region when that run was a
-- `collect --usage`, matched by the service's powerId, else its name (view
-- latest_service_powers; price_source 'api'), else the bundled list (price_source 'bundled'):
-- sql/lightsail_container_prices.csv (power, usd_per_node_month, source, as_of).
-- A power missing from both gives NULL prices (price_source NULL), never a silent 0.
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
    coalesce(a.price_per_month, p.usd_per_node_month) AS usd_per_node_month,
    coalesce(a.price_per_month, p.usd_per_node_month) * s.scale AS usd_per_month,
    coalesce(CASE WHEN a.price_per_month IS NOT NULL THEN CAST(a.collected_at AS DATE) END, p.as_of)
        AS price_as_of,
    CASE WHEN a.price_per_month IS NOT NULL THEN 'api' WHEN p.power IS NOT NULL THEN 'bundled' END
        AS price_source
FROM latest_container_services AS s
LEFT JOIN latest_service_powers AS a
    ON a.run_id = s.run_id AND a.account_id = s.account_id AND a.region = s.region
    AND a.service_name = s.service_name
LEFT JOIN prices AS p ON p.power = s.power
ORDER BY usd_per_month DESC NULLS FIRST, s.account_id, s.region, s.service_name
