-- Monthly cost estimate per service: price of its power × scale (USD, compute only; disabled services included).
-- params: prices={sql_dir}/lightsail_container_prices.csv
-- The price: GetContainerServicePowers' of the service's own run and region when that run was a
-- `collect --usage` (price_source 'api'), else the bundled list (price_source 'bundled'):
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
),
api AS (
    SELECT run_id, region, name AS power, max(price_per_month) AS usd_per_node_month,
           max(collected_at) AS collected_at
    FROM container_powers
    GROUP BY run_id, region, name
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
    coalesce(a.usd_per_node_month, p.usd_per_node_month) AS usd_per_node_month,
    coalesce(a.usd_per_node_month, p.usd_per_node_month) * s.scale AS usd_per_month,
    coalesce(CAST(a.collected_at AS DATE), p.as_of) AS price_as_of,
    CASE WHEN a.power IS NOT NULL THEN 'api' WHEN p.power IS NOT NULL THEN 'bundled' END
        AS price_source
FROM latest_container_services AS s
LEFT JOIN api AS a ON a.run_id = s.run_id AND a.region = s.region AND a.power = s.power
LEFT JOIN prices AS p ON p.power = s.power
ORDER BY usd_per_month DESC NULLS FIRST, s.account_id, s.region, s.service_name
