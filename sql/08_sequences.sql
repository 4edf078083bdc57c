-- sequences: fixed-width integer arrays ready to become tensors, left-padded with 0.
-- inputs: events, windows.
-- outputs:
--   sequences (key split, user_idx): for each window (valid, test, all) and each user with at least
--     one event before the window's start, the last max_len of those events; n_events counts all of
--     them; last_event_at is the latest input (always before window_start).
--   train_sequences (key user_idx, chunk): every event before the valid window, cut into chunks of
--     max_len from the most recent one back (chunk 0 is the most recent). Targets per position:
--     next_item_idx (the next event's item, if it is before the valid window), purchase_target and
--     cart_target (the user's next purchase / cart after this event, if within eval_seconds and before
--     the valid window), 0 where there is none.
-- parameters: max_len, eval_seconds.
create or replace table sequences as
with starts as (
    select
        max(window_start) filter (where split = 'valid') as valid_start,
        max(window_start) filter (where split = 'test') as test_start,
        max(window_start) filter (where split = 'all') as all_start
    from windows
),

per_user as (
    -- one scan: how many of each user's events precede each window (seq is time order, so the
    -- inputs of a window are seq 1..n), and the latest of them
    select
        e.user_idx,
        count(*) filter (where e.event_at < s.valid_start) as n_valid,
        count(*) filter (where e.event_at < s.test_start) as n_test,
        count(*) filter (where e.event_at < s.all_start) as n_all,
        max(e.event_at) filter (where e.event_at < s.valid_start) as last_valid,
        max(e.event_at) filter (where e.event_at < s.test_start) as last_test,
        max(e.event_at) filter (where e.event_at < s.all_start) as last_all
    from events as e
    cross join starts as s
    group by e.user_idx
),

cutoffs as (
    select user_idx, 'valid' as split, n_valid as n_events, last_valid as last_event_at from per_user where n_valid > 0
    union all
    select user_idx, 'test', n_test, last_test from per_user where n_test > 0
    union all
    select user_idx, 'all', n_all, last_all from per_user where n_all > 0
),

candidates as (
    -- only events that can be among some window's last max_len inputs
    select e.*
    from events as e
    join per_user as p on p.user_idx = e.user_idx
    where e.seq > least(
        case when p.n_valid > 0 then p.n_valid else p.n_all end,
        p.n_test, p.n_all
    ) - getvariable('max_len')
        and e.seq <= p.n_all
),

recent as (
    select c.split, c.n_events, c.last_event_at, e.*
    from cutoffs as c
    join candidates as e
        on e.user_idx = c.user_idx
        and e.seq > c.n_events - getvariable('max_len')
        and e.seq <= c.n_events
),

grouped as (
    select
        split,
        user_idx,
        any_value(n_events) as n_events,
        any_value(last_event_at) as last_event_at,
        count(*) as n,
        -- one plain list of structs sorted afterwards (seq first, unique in the group): unlike
        -- list(x order by seq) per column, a plain list aggregate can spill under a memory limit
        list_sort(list({
            seq: seq, item_idx: item_idx, brand_idx: brand_idx, category_idx: category_idx,
            event_type_id: event_type_id::integer, price_bucket: price_bucket::integer,
            hour_id: hour_id::integer, weekday_id: weekday_id::integer, gap_bucket: gap_bucket::integer,
            ts: ts
        }), 'ASC') as steps
    from recent
    group by split, user_idx
),

final as (
    select
        split,
        user_idx,
        n_events,
        last_event_at,
        left_pad(list_transform(steps, lambda x: x.item_idx), getvariable('max_len')) as item_idx,
        left_pad(list_transform(steps, lambda x: x.brand_idx), getvariable('max_len')) as brand_idx,
        left_pad(list_transform(steps, lambda x: x.category_idx), getvariable('max_len')) as category_idx,
        left_pad(list_transform(steps, lambda x: x.event_type_id), getvariable('max_len')) as event_type_id,
        left_pad(list_transform(steps, lambda x: x.price_bucket), getvariable('max_len')) as price_bucket,
        left_pad(list_transform(steps, lambda x: x.hour_id), getvariable('max_len')) as hour_id,
        left_pad(list_transform(steps, lambda x: x.weekday_id), getvariable('max_len')) as weekday_id,
        left_pad(list_transform(steps, lambda x: x.gap_bucket), getvariable('max_len')) as gap_bucket,
        left_pad(list_transform(steps, lambda x: x.ts), getvariable('max_len')) as ts
    from grouped
)

select * from final order by split, user_idx;

create or replace table train_sequences as
with valid_start as (
    select window_start, start_ts from windows where split = 'valid'
),

history as (
    select
        e.*,
        max(e.seq) over (partition by e.user_idx) as last_seq,
        v.window_start,
        v.start_ts
    from events as e
    cross join valid_start as v
    where e.event_at < v.window_start
),

targeted as (
    select
        *,
        (last_seq - seq) // getvariable('max_len') as chunk,
        case when next_ts < start_ts then coalesce(next_item_idx, pad_id()) else pad_id() end as next_target,
        case
            when next_purchase_ts < start_ts and next_purchase_ts - ts <= getvariable('eval_seconds')
                then next_purchase_item_idx
            else pad_id()
        end as purchase_target,
        case
            when next_cart_ts < start_ts and next_cart_ts - ts <= getvariable('eval_seconds')
                then next_cart_item_idx
            else pad_id()
        end as cart_target
    from history
),

grouped as (
    select
        user_idx,
        chunk,
        count(*) as n,
        max(event_at) as last_event_at,
        list_sort(list({
            seq: seq, item_idx: item_idx, brand_idx: brand_idx, category_idx: category_idx,
            event_type_id: event_type_id::integer, price_bucket: price_bucket::integer,
            hour_id: hour_id::integer, weekday_id: weekday_id::integer, gap_bucket: gap_bucket::integer,
            ts: ts, next_target: next_target::integer, purchase_target: purchase_target::integer,
            cart_target: cart_target::integer
        }), 'ASC') as steps
    from targeted
    group by user_idx, chunk
    having sum((next_target <> pad_id())::integer + (purchase_target <> pad_id())::integer
        + (cart_target <> pad_id())::integer) > 0
),

final as (
    select
        user_idx,
        chunk,
        n as n_events,
        last_event_at,
        left_pad(list_transform(steps, lambda x: x.item_idx), getvariable('max_len')) as item_idx,
        left_pad(list_transform(steps, lambda x: x.brand_idx), getvariable('max_len')) as brand_idx,
        left_pad(list_transform(steps, lambda x: x.category_idx), getvariable('max_len')) as category_idx,
        left_pad(list_transform(steps, lambda x: x.event_type_id), getvariable('max_len')) as event_type_id,
        left_pad(list_transform(steps, lambda x: x.price_bucket), getvariable('max_len')) as price_bucket,
        left_pad(list_transform(steps, lambda x: x.hour_id), getvariable('max_len')) as hour_id,
        left_pad(list_transform(steps, lambda x: x.weekday_id), getvariable('max_len')) as weekday_id,
        left_pad(list_transform(steps, lambda x: x.gap_bucket), getvariable('max_len')) as gap_bucket,
        left_pad(list_transform(steps, lambda x: x.ts), getvariable('max_len')) as ts,
        left_pad(list_transform(steps, lambda x: x.next_target), getvariable('max_len')) as next_target,
        left_pad(list_transform(steps, lambda x: x.purchase_target), getvariable('max_len')) as purchase_target,
        left_pad(list_transform(steps, lambda x: x.cart_target), getvariable('max_len')) as cart_target
    from grouped
)

select * from final order by user_idx, chunk;
