-- report: named queries behind `purchasepred report`, read-only over a prepared dataset's Parquet
-- tables and a recommendations CSV. Parameters (DuckDB variables): events, items, users, categories
-- (Parquet files of the prepared dataset), recs (the recommendations CSV).

-- name: events_per_day
-- grain: one (day, event type); the events that reach sessionize (after rejects, duplicates, repeat views)
select
    date_trunc('day', event_at)::date as day,
    case event_type_id when 1 then 'view' when 2 then 'cart' when 3 then 'purchase' else 'remove_from_cart' end
        as event_type,
    count(*) as n
from read_parquet(getvariable('events'))
group by all
order by day, event_type;

-- name: recs_overview
-- one row: rows, users, distinct items recommended, catalog size, rows on an item the user already touched
with recs as (
    select user_id, item_id from read_csv(getvariable('recs'), header = true, all_varchar = true)
),

catalog as (
    select product_id from read_parquet(getvariable('items')) where item_idx >= first_id()
),

touched as (
    select distinct users.user_id, items.product_id
    from read_parquet(getvariable('events')) as events
    inner join read_parquet(getvariable('users')) as users on users.user_idx = events.user_idx
    inner join read_parquet(getvariable('items')) as items on items.item_code = events.item_code
),

final as (
    select
        (select count(*) from recs) as rows,
        (select count(distinct user_id) from recs) as users,
        (select count(distinct item_id) from recs) as items_recommended,
        (select count(*) from catalog) as catalog_items,
        (select count(*) from recs inner join touched using (user_id) where touched.product_id = recs.item_id)
            as rows_seen
)

select * from final;

-- name: recs_by_source
-- grain: one source (blend, model, history, popularity ...)
select source, count(*) as rows, count(distinct user_id) as users
from read_csv(getvariable('recs'), header = true, all_varchar = true)
group by source
order by rows desc, source;

-- name: recs_popularity_deciles
-- grain: one popularity decile of the catalog (1 = the most-interacted tenth of the items with an id):
-- its share of all events on catalog items, and its share of recommendation slots
with items as (
    select product_id, n_events, ntile(10) over (order by n_events desc, item_idx) as decile
    from read_parquet(getvariable('items'))
    where item_idx >= first_id()
),

recs as (
    select item_id from read_csv(getvariable('recs'), header = true, all_varchar = true)
),

slots as (
    select items.decile, count(*) as n
    from recs
    inner join items on items.product_id = recs.item_id
    group by items.decile
),

final as (
    select
        items.decile,
        count(*) as items,
        sum(items.n_events) / (select sum(n_events) from items) as event_share,
        coalesce(any_value(slots.n), 0) / (select count(*) from recs) as slot_share
    from items
    left join slots on slots.decile = items.decile
    group by items.decile
)

select * from final order by decile;

-- name: recs_top_categories
-- grain: one category among the 10 most recommended; its share of slots and of catalog events
with items as (
    select items.product_id, items.n_events, coalesce(nullif(categories.category_code, ''), items.category) as category
    from read_parquet(getvariable('items')) as items
    left join read_parquet(getvariable('categories')) as categories on categories.category_idx = items.category_idx
    where items.item_idx >= first_id()
),

recs as (
    select item_id from read_csv(getvariable('recs'), header = true, all_varchar = true)
),

per_category as (
    select
        coalesce(items.category, '(none)') as category,
        count(*) / (select count(*) from recs) as slot_share
    from recs
    inner join items on items.product_id = recs.item_id
    group by 1
),

catalog as (
    select coalesce(category, '(none)') as category, sum(n_events) / (select sum(n_events) from items) as event_share
    from items
    group by 1
),

final as (
    select per_category.category, per_category.slot_share, coalesce(catalog.event_share, 0) as event_share
    from per_category
    left join catalog using (category)
)

select * from final order by slot_share desc, category limit 10;
