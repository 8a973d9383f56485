-- Monthly cost per account, and per value of the tag tag_key when given ('(untagged)' for services without it), with a total per account and for all: each service counted once in every total; the run's prices (container_powers), else the bundled price list.
-- params: tag_key=, prices={sql_dir}/lightsail_container_prices.csv
-- level: 'tag' (account × tag value; only with tag_key), 'account', 'total'. A service's
-- price is its power's price in the container_powers of the run that scanned it, by its
-- powerId, else its name (view latest_service_powers; collect --usage: price_source 'api'),
-- else the price list (price_source 'bundled'); a power in neither is counted in
-- `unpriced` and adds nothing, never a silent 0 in disguise.
-- Tags are container_services.tags, a map: a key has one value per service, so a service is
-- in one tag row of its account. A key without a value (AWS allows it) counts as ''.
WITH bundled AS (
    SELECT power, usd_per_node_month
    FROM read_csv(
        $prices,
        header = true,
        delim = ',',
        columns = {
            'power': 'VARCHAR',
            'usd_per_node_month': 'DOUBLE',
            'source': 'VARCHAR',
            'as_of': 'DATE'
        }
    )
),
priced AS (
    SELECT s.account_id, s.account_name, s.scale,
        CASE
            WHEN $tag_key = '' THEN NULL
            WHEN map_contains(s.tags, $tag_key) THEN coalesce(map_extract(s.tags, $tag_key)[1], '')
            ELSE '(untagged)'
        END AS tag_value,
        coalesce(p.price_per_month, b.usd_per_node_month) * s.scale AS usd_per_month,
        CASE
            WHEN p.price_per_month IS NOT NULL THEN 'api'
            WHEN b.usd_per_node_month IS NOT NULL THEN 'bundled'
        END AS price_source
    FROM latest_container_services AS s
    LEFT JOIN latest_service_powers AS p
        ON p.run_id = s.run_id AND p.account_id = s.account_id AND p.region = s.region
        AND p.service_name = s.service_name
    LEFT JOIN bundled AS b ON b.power = s.power
)
SELECT
    CASE
        WHEN grouping(account_id) = 1 THEN 'total'
        WHEN grouping(tag_value) = 1 THEN 'account'
        ELSE 'tag'
    END AS level,
    account_id,
    CASE WHEN grouping(account_id) = 0 THEN any_value(account_name) END AS account_name,
    nullif($tag_key, '') AS tag_key,
    tag_value,
    count(*) AS services,
    sum(scale) AS nodes,
    round(coalesce(sum(usd_per_month), 0), 2) AS usd_per_month,
    count(*) FILTER (WHERE price_source IS NULL) AS unpriced,
    string_agg(DISTINCT price_source, ', ' ORDER BY price_source) AS price_source
FROM priced
GROUP BY GROUPING SETS ((account_id, tag_value), (account_id), ())
HAVING $tag_key <> '' OR grouping(tag_value) = 1
ORDER BY grouping(account_id), account_id, grouping(tag_value), usd_per_month DESC, tag_value
