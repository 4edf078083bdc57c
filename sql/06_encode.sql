-- encode: one row per event with dense ids and the features the model reads.
-- inputs: sessionized, users, items, brands, categories.
-- outputs: events (grain: one event; key user_idx, seq; ordered by user_idx, seq, so that the files are byte-identical run to run):
--   event_type_id 1 view, 2 cart, 3 purchase, 4 remove_from_cart (0 is padding);
--   price_bucket 1 unknown or zero, else 2 + floor(2 * log2(1 + price)) capped at 31;
--   hour_id 1..24, weekday_id 1..7 (ISO, Monday = 1);
--   gap_bucket 1 for the user's first event, else 2 + floor(log2(1 + seconds since previous)) capped at 27;
--   ts (epoch seconds) and, for training targets, the next event's item and time and the user's
--   next purchase and next cart (item and time) after this event.
-- parameters: none.
create or replace table events as
with joined as (
    select
        u.user_idx,
        s.seq,
        s.event_at,
        epoch(s.event_at)::bigint as ts,
        s.event_type_id,
        i.item_idx,
        s.item_key as product_id,
        coalesce(b.brand_idx, unknown_id()) as brand_idx,
        coalesce(c.category_idx, unknown_id()) as category_idx,
        case when s.price is null or s.price <= 0 then unknown_id()
            else least(2 + floor(2 * log2(1 + s.price)), 31) end::tinyint as price_bucket,
        (hour(s.event_at) + 1)::tinyint as hour_id,
        isodow(s.event_at)::tinyint as weekday_id,
        case when s.gap_seconds is null then unknown_id()
            else least(2 + floor(log2(1 + s.gap_seconds)), 27) end::tinyint as gap_bucket,
        s.session_no,
        s.is_session_start
    from sessionized as s
    join users as u on u.user_id = s.user_key
    join items as i on i.product_id = s.item_key
    left join brands as b on b.brand = s.brand
    left join categories as c on c.category = coalesce(s.category_key, s.category_code)
),

with_next as (
    -- the earliest later purchase (cart) of the user, found in the same window pass: structs
    -- compare field by field, so the min over {seq, item, ts} is the next one, with its item and time
    select
        *,
        lead(item_idx) over w as next_item_idx,
        lead(ts) over w as next_ts,
        min(case when event_type_id = purchase_id() then {'seq': seq, 'item_idx': item_idx, 'ts': ts} end) over w_after
            as next_purchase,
        min(case when event_type_id = cart_id() then {'seq': seq, 'item_idx': item_idx, 'ts': ts} end) over w_after
            as next_cart
    from joined
    window
        w as (partition by user_idx order by seq),
        w_after as (partition by user_idx order by seq rows between 1 following and unbounded following)
),

final as (
    select
        user_idx, seq, event_at, ts, event_type_id, item_idx, product_id, brand_idx,
        category_idx, price_bucket, hour_id, weekday_id, gap_bucket, session_no,
        is_session_start, next_item_idx, next_ts,
        next_purchase.item_idx as next_purchase_item_idx,
        next_purchase.ts as next_purchase_ts,
        next_cart.item_idx as next_cart_item_idx,
        next_cart.ts as next_cart_ts
    from with_next
)

select * from final order by user_idx, seq;
