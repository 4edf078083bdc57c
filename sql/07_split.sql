-- split: time-based windows with no leakage. With T the last event time, test is the last
-- eval_seconds up to and including T, valid the eval_seconds before it, and "all" the future window
-- after T that export predicts. A window's inputs are only the events strictly before its start;
-- its truth is the set of (user, item) purchases inside it.
-- inputs: kept_events and attr_codes (04_sessionize.sql: the events as encode wrote them, in memory),
--   users, items.
-- outputs: windows (key split: valid, test, all; window_start inclusive, window_end exclusive) and
--   truth (grain: split, user_idx, product_id; item_idx is 1 for items too rare to have an id: they
--   stay in the truth and count against every ranker).
-- parameters: eval_seconds.
create or replace table windows as
with bounds as (
    -- (the last of the users' last events: the last event, without a scan of them)
    select max(last_event_at) as last_at from users
),

cutoffs as (
    select
        last_at,
        last_at - to_microseconds((getvariable('eval_seconds') * 1e6)::bigint) as test_start
    from bounds
),

final as (
    select
        'valid' as split,
        test_start - to_microseconds((getvariable('eval_seconds') * 1e6)::bigint) as window_start,
        test_start as window_end
    from cutoffs
    union all
    select 'test', test_start, last_at + interval 1 microsecond from cutoffs
    union all
    select
        'all',
        last_at + interval 1 microsecond,
        last_at + interval 1 microsecond + to_microseconds((getvariable('eval_seconds') * 1e6)::bigint)
    from cutoffs
)

-- start_ts is the first whole second at or after window_start, so that for whole-second event times
-- ts < start_ts exactly when event_at < window_start (epoch()::bigint would round T + 1 us down to T)
select split, window_start, window_end, ceil(epoch(window_start))::bigint as start_ts from final;

-- (the purchases of the kept events in memory, each item's code from its attr_code, where the same
-- purchases read from events.parquet cost a scan of five of its columns: 0.3 s at 8M rows, on both
-- cores, for 125K purchases)
create or replace table truth as
with purchases as (
    select w.split, e.user_idx, i.product_id, i.item_idx, e.event_at
    from kept_events as e
    join attr_codes as a using (attr_code)
    join items as i on i.item_code = a.item_code
    join windows as w on e.event_at >= w.window_start and e.event_at < w.window_end
    where e.event_type_id = purchase_id()
),

final as (
    select split, user_idx, product_id, any_value(item_idx) as item_idx, count(*) as n_purchases,
        min(event_at) as first_purchase_at
    from purchases
    group by split, user_idx, product_id
)

select * from final order by split, user_idx, product_id;
