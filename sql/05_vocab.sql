-- vocab: dense ids for users, items, brands and categories (counted on the kept events: collapsed
-- repeat views are left out). 0 is padding and 1 is unknown / rare
-- (seen fewer than min_item_count times); real ids start at 2, most frequent first, ties broken by
-- the raw id so that the numbering is deterministic. Counted on the kept events' codes, turned back into
-- text through the key tables of 03_clean.sql (a code sorts like its text, so ordering by either is
-- the same).
-- inputs: shard_users and shard_attr_counts (04_sessionize.sql: the kept events counted per user and per
--   attr_code, each shard's), attr_codes, user_keys, item_keys, category_keys, category_codes, brand_keys.
-- outputs: attr_counts (the kept events counted per attr_code, the shards' counts added up),
--   users (key user_idx; raw user_id), items (key item_key; item_idx may be 1 for rare items;
--   with the item's latest brand, category, price, and its item_code, the number events.parquet maps
--   each event's raw item by: 1.. in product_id order, one per item), brands (key brand_idx), categories (key
--   category_idx; the category is category_id where present, else category_code; its category_code
--   the first one seen with it, in user and position order), and for 06_encode.sql the maps from
--   codes to ids: item_ids (item_code -> item_idx, product_id), brand_ids (brand_code -> brand_idx);
--   categories maps a category's text to its category_idx.
-- Every output table is ordered by its id and then its raw value, so that the files are
-- byte-identical run to run.
-- parameters: min_item_count.
create or replace table users as
-- user_idx comes from sessionize (users in user_key order, from first_id()); its counts from each shard's
-- (shard_users: every user is in one shard)
select c.user_idx, k.user_key as user_id, c.n_events, c.first_event_at, c.last_event_at
from shard_users as c
join user_keys as k on k.user_code = c.user_idx - first_id() + 1
order by c.user_idx;

-- the kept events counted per attr_code (04_sessionize.sql: one code per item, category and brand), the one
-- pass over the events that brands, categories and items below are summed from: the shards' counts
-- (shard_attr_counts) added up, the latest of their latest events, the first of their first
create or replace table attr_counts as
with counts as (
    select
        attr_code,
        sum(n_events)::bigint as n_events,
        sum(n_purchases)::bigint as n_purchases,
        max(latest_key) as latest_key,
        min(first_seen) as first_seen,
        -- (the latest price of any shard: each shard's latest price is at its price_key)
        arg_max(price, price_key) as price,
        max(price_key) as price_key
    from shard_attr_counts
    group by attr_code
)

select c.*, a.item_code, a.category_key_code, a.category_code_code, a.brand_code
from counts as c
join attr_codes as a using (attr_code);

create or replace table brand_ids as
with counts as (
    select brand_code, sum(n_events)::bigint as n_events from attr_counts where brand_code is not null group by brand_code
)

select
    c.brand_code,
    case when c.n_events >= getvariable('min_item_count')
        then (row_number() over (order by c.n_events desc, c.brand_code) + first_id() - 1)::integer
        else unknown_id() end as brand_idx,
    k.brand,
    c.n_events
from counts as c
join brand_keys as k using (brand_code);

create or replace table brands as
select brand_idx, brand, n_events from brand_ids order by brand_idx, brand;

-- one row per pair of category codes that events carry, with the category text it stands for
create or replace table category_pairs as
with counts as (
    select category_key_code, category_code_code, sum(n_events)::bigint as n_events, min(first_seen) as first_seen
    from attr_counts
    group by all
)

select
    c.category_key_code,
    c.category_code_code,
    coalesce(k.category_key, cc.category_code) as category,
    cc.category_code,
    c.n_events,
    c.first_seen
from counts as c
left join category_keys as k using (category_key_code)
left join category_codes as cc using (category_code_code);

create or replace table categories as
with counts as (
    select category, arg_min(category_code, first_seen) as category_code, sum(n_events)::bigint as n_events
    from category_pairs
    where category is not null
    group by category
)

select
    case when n_events >= getvariable('min_item_count')
        then (row_number() over (order by n_events desc, category) + first_id() - 1)::integer else unknown_id() end as category_idx,
    category,
    category_code,
    n_events
from counts
order by category_idx, category;

create or replace table item_ids as
with counts as (
    -- the latest event's values: arg_max skips NULLs, so each is the value of the latest event that has one
    -- (an attr_code's brand and category are those of each of its events, its latest_key the latest of them)
    select
        item_code,
        sum(n_events)::bigint as n_events,
        sum(n_purchases)::bigint as n_purchases,
        arg_max(brand_code, latest_key) as brand_code,
        arg_max({'key': category_key_code, 'code': category_code_code}, latest_key)
            filter (where category_key_code is not null or category_code_code is not null) as category_codes,
        arg_max(price, price_key) as price
    from attr_counts
    group by item_code
),

ranked as (
    select
        *,
        case when n_events >= getvariable('min_item_count')
            then (row_number() over (order by n_events desc, item_code) + first_id() - 1)::integer else unknown_id() end as item_idx
    from counts
)

select
    r.item_code,
    r.item_idx,
    k.item_key as product_id,
    r.n_events,
    r.n_purchases,
    coalesce(b.brand_idx, unknown_id()) as brand_idx,
    coalesce(c.category_idx, unknown_id()) as category_idx,
    b.brand,
    c.category,
    r.price
from ranked as r
join item_keys as k using (item_code)
left join brand_ids as b using (brand_code)
left join category_pairs as p
    on p.category_key_code is not distinct from r.category_codes.key
    and p.category_code_code is not distinct from r.category_codes.code
    and r.category_codes is not null
left join categories as c on c.category = p.category;

create or replace table items as
select item_idx, product_id, n_events, n_purchases, brand_idx, category_idx, brand, category, price, item_code
from item_ids
order by item_idx, product_id;
