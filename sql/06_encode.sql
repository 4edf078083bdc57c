-- encode: one row per event with dense ids and the features the model reads.
-- inputs: sessionized (user_idx, seq, sessions, next event, running purchase/cart numbers; text columns
--   as codes), item_ids, brand_ids, category_ids (the maps from codes to ids of 05_vocab.sql).
-- outputs: events (grain: one event; key user_idx, seq; ordered by user_idx, seq, so that the files are byte-identical run to run):
--   event_type_id 1 view, 2 cart, 3 purchase, 4 remove_from_cart (0 is padding);
--   price_bucket 1 unknown or zero, else 2 + floor(2 * log2(1 + price)) capped at 31;
--   hour_id 1..24, weekday_id 1..7 (ISO, Monday = 1);
--   gap_bucket 1 for the user's first event, else 2 + floor(log2(1 + seconds since previous)) capped at 27;
--   ts (epoch seconds) and, for training targets, the next event's item and time and the user's
--   next purchase and next cart (item and time) after this event.
-- parameters: none.
create or replace table events as
with next_purchases as (
    -- the user's next purchase after an event is the purchase numbered one more than its purchase_no
    select s.user_idx, s.purchase_no, i.item_idx, epoch(s.event_at)::bigint as ts
    from sessionized as s
    join item_ids as i using (item_code)
    where s.event_type_id = purchase_id()
),

next_carts as (
    select s.user_idx, s.cart_no, i.item_idx, epoch(s.event_at)::bigint as ts
    from sessionized as s
    join item_ids as i using (item_code)
    where s.event_type_id = cart_id()
),

joined as (
    select
        s.user_idx,
        s.seq,
        s.event_at,
        epoch(s.event_at)::bigint as ts,
        s.event_type_id,
        i.item_idx,
        i.product_id,
        coalesce(b.brand_idx, unknown_id()) as brand_idx,
        coalesce(c.category_idx, unknown_id()) as category_idx,
        case when s.price is null or s.price <= 0 then unknown_id()
            else least(2 + floor(2 * log2(1 + s.price)), 31) end::tinyint as price_bucket,
        (hour(s.event_at) + 1)::tinyint as hour_id,
        isodow(s.event_at)::tinyint as weekday_id,
        case when s.gap_seconds is null then unknown_id()
            else least(2 + floor(log2(1 + s.gap_seconds)), 27) end::tinyint as gap_bucket,
        s.session_no,
        s.is_session_start,
        n.item_idx as next_item_idx,
        epoch(s.next_at)::bigint as next_ts,
        p.item_idx as next_purchase_item_idx,
        p.ts as next_purchase_ts,
        k.item_idx as next_cart_item_idx,
        k.ts as next_cart_ts
    from sessionized as s
    join item_ids as i using (item_code)
    left join item_ids as n on n.item_code = s.next_item_code
    left join brand_ids as b using (brand_code)
    left join category_ids as c
        on c.category_key_code is not distinct from s.category_key_code
        and c.category_code_code is not distinct from s.category_code_code
    left join next_purchases as p on p.user_idx = s.user_idx and p.purchase_no = s.purchase_no + 1
    left join next_carts as k on k.user_idx = s.user_idx and k.cart_no = s.cart_no + 1
)

select * from joined order by user_idx, seq;
