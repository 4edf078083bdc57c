-- vocab: dense ids for users, items, brands and categories. 0 is padding and 1 is unknown / rare
-- (seen fewer than min_item_count times); real ids start at 2, most frequent first, ties broken by
-- the raw id so that the numbering is deterministic.
-- inputs: sessionized.
-- outputs: users (key user_idx; raw user_id), items (key item_key; item_idx may be 1 for rare items;
--   with the item's latest brand, category, price), brands (key brand_idx), categories (key
--   category_idx; the category is category_id where present, else category_code).
-- Every table is ordered by its id and then its raw value, so that the files are byte-identical run to run.
-- parameters: min_item_count.
create or replace table users as
-- user_idx comes from sessionize (users in user_key order, from first_id())
select
    user_idx,
    any_value(user_key) as user_id,
    count(*) as n_events,
    min(event_at) as first_event_at,
    max(event_at) as last_event_at
from sessionized
group by user_idx
order by user_idx;

create or replace table brands as
with counts as (
    select brand, count(*) as n_events from sessionized where brand is not null group by brand
)

select
    case when n_events >= getvariable('min_item_count')
        then (row_number() over (order by n_events desc, brand) + first_id() - 1)::integer else unknown_id() end as brand_idx,
    brand,
    n_events
from counts
order by brand_idx, brand;

create or replace table categories as
with counts as (
    select
        coalesce(category_key, category_code) as category,
        any_value(category_code) as category_code,
        count(*) as n_events
    from sessionized
    where coalesce(category_key, category_code) is not null
    group by 1
)

select
    case when n_events >= getvariable('min_item_count')
        then (row_number() over (order by n_events desc, category) + first_id() - 1)::integer else unknown_id() end as category_idx,
    category,
    category_code,
    n_events
from counts
order by category_idx, category;

create or replace table items as
with counts as (
    select
        item_key,
        count(*) as n_events,
        count(*) filter (where event_type_id = purchase_id()) as n_purchases,
        -- the latest event's values; ties at the same time broken by user and position (deterministic)
        arg_max(brand, {'at': event_at, 'user': user_key, 'seq': seq}) as brand,
        arg_max(coalesce(category_key, category_code), {'at': event_at, 'user': user_key, 'seq': seq}) as category,
        arg_max(price, {'at': event_at, 'user': user_key, 'seq': seq}) as price
    from sessionized
    group by item_key
),

ranked as (
    select
        *,
        case when n_events >= getvariable('min_item_count')
            then (row_number() over (order by n_events desc, item_key) + first_id() - 1)::integer else unknown_id() end as item_idx
    from counts
),

final as (
    select
        r.item_idx,
        r.item_key as product_id,
        r.n_events,
        r.n_purchases,
        coalesce(b.brand_idx, unknown_id()) as brand_idx,
        coalesce(c.category_idx, unknown_id()) as category_idx,
        r.brand,
        r.category,
        r.price
    from ranked as r
    left join brands as b on b.brand = r.brand
    left join categories as c on c.category = r.category
)

select * from final order by item_idx, product_id;
