-- read: named queries that turn a prepared dataset's Parquet tables into arrays for training,
-- evaluation and export. Parameters: path (the Parquet file), split. An event's ts (epoch seconds) is
-- taken from its event_at here: events.parquet does not store it (06_encode.sql), nor the time features
-- hour_id 1..24 and weekday_id 1..7 (ISO, Monday = 1), taken here from event_at (UTC) too.

-- name: sequence_events
-- every event as one token, in the stored (user_idx, seq) order: the sequence store that training
-- chunks, their targets and window inputs are cut from when loading (data/sequences.py)
select
    user_idx, seq, epoch_us(event_at) as at_us,
    item_idx, brand_idx, category_idx, event_type_id, price_bucket,
    (hour(event_at) + 1)::tinyint as hour_id, isodow(event_at)::tinyint as weekday_id, gap_bucket,
    epoch(event_at)::bigint as ts
from read_parquet(getvariable('path'));

-- name: split_truth
select user_idx, item_idx, product_id from read_parquet(getvariable('path'))
where split = getvariable('split') order by user_idx, item_idx, product_id;

-- name: split_window
select window_start, window_end, start_ts from read_parquet(getvariable('path')) where split = getvariable('split');

-- name: items
select item_idx, product_id, n_events, n_purchases, category_idx
from read_parquet(getvariable('path')) order by item_idx, product_id;

-- name: users
select user_idx, user_id from read_parquet(getvariable('path')) order by user_idx;

-- name: events_before
-- the events a window's rankers may use: every event strictly before the window's start
select user_idx, item_idx, event_type_id, epoch(event_at)::bigint as ts from read_parquet(getvariable('path'))
where event_at < getvariable('before_at') and item_idx >= first_id()
order by user_idx, seq;

-- name: export_check
-- (users without exactly k distinct items, users written) of a recommendations CSV
with recs as (
    select * from read_csv(getvariable('path'), header = true, all_varchar = true)
),

per_user as (
    select user_id, count(*) as n, count(distinct item_id) as n_distinct
    from recs
    group by user_id
)

select
    count(*) filter (where n <> getvariable('k') or n_distinct <> getvariable('k')) as bad_users,
    count(*) as n_users
from per_user;

-- name: events_before_detail
-- events_before with the session and price bucket of each event (candidate generators, re-ranker features)
select user_idx, item_idx, event_type_id, epoch(event_at)::bigint as ts, session_no, price_bucket, category_idx
from read_parquet(getvariable('path'))
where event_at < getvariable('before_at') and item_idx >= first_id()
order by user_idx, seq;
