-- sessionize: sort each user's valid events in codes and make one streaming pass over them:
-- exact duplicates left out, repeat views flagged, then positions, gaps and sessions of each user's
-- kept events. The users are cut into shards, ranges of user keys with about as many users each (as
-- many shards as DuckDB has threads, at most one per 1M valid rows: a small input is one shard), that
-- prepare sessionizes side by side, each on a connection of its own (which sets its own
-- shard_first_user_key and shard_last_user_key and runs the query "shard"): DuckDB runs a streaming
-- window, and everything after it in the same pipeline, on one thread, which on 8M rows was about 3 s
-- of the step's 4.5 s with the other cores idle. Every value is per user, so the shards' rows are the
-- same as one pass's. No table of the sorted events is stored in between: the window passes read the
-- sort's output directly, and only fixed-width codes travel through them. Window sums run over all of
-- a shard's users at once; a user's own count is the running total minus its value before the user's
-- first event, carried forward from that event by last_value(... ignore nulls). Running counts use
-- count(*) (filter (...)): a BIGINT, where sum() of integers would be a HUGEINT.
-- inputs: staged and the key tables of 03_clean.sql.
-- outputs: sessionized (grain: one distinct event, each shard's rows in the sort's order, the shards
--   in user order: each inserts in a transaction of its own, and prepare commits them in that order,
--   so that the table is in user_idx, seq order, the same run to run; exact duplicates are left out and counted as the difference to staged's valid
--   events; the item, category and brand as one attr_code, the table attr_codes). Its flags hold three bits: 1, a repeat view,
--   a view that directly repeats the user's previous event (a view of the same item in the same
--   session within the gap): it is collapsed, kept in this table only to be counted, and seq,
--   gap_seconds and session_no are NULL on it; 2, a tie conflict, an event that the short sort key
--   could not order against the one before it (prepare then sorts by every column and runs the shards
--   again); 4, a session start (one tinyint where three booleans cost 0.1-0.13 s more of
--   sessionize at 8M rows: each stored column costs about 0.06 CPU-s per 8M rows). The kept events have
--   user_idx (users numbered in user_key order from first_id()), seq (1-based position in the user's
--   kept history: a user's first event is seq 1, never a collapsed one), gap_seconds since the user's
--   previous kept event, and session_no (1-based within the user). A session is the raw user_session
--   where present, split further (and created where missing) by an inactivity gap. The view
--   kept_events: the rows without the collapsed views. (Each event's next
--   event, purchase and cart are found when loading: data/sequences.py.) The views coded and
--   sorted_events are the shard's events in codes, unsorted and sorted (exact_order.sql may replace
--   sorted_events).
-- parameters: session_gap_seconds, shard_first_user_key, shard_last_user_key (per connection; after
--   sort_once, shard_of_sorted sets shard_first_user_code and shard_last_user_code from them).

-- name: define
-- each distinct item, category and brand of the events (as staged holds them) by its item_hash, with their
-- codes and attr_code (03_clean.sql's view, stored once, after exact_keys.sql): what the events are joined on
create or replace table item_hash_codes as select * from item_attr_codes;

-- one row per attr_code with its codes: what 05_vocab.sql and 06_encode.sql read them from (texts that
-- clean to the same four share an attr_code: item_hash_codes may hold it more than once)
create or replace table attr_codes as
select distinct * exclude (item_hash) from item_hash_codes order by attr_code;

-- the kept events counted per user and per attr_code, each shard's own (the query "shard_counts", which each
-- shard's connection runs right after its pass, in the same transaction, so that it counts only that
-- shard's rows): what 05_vocab.sql's users and attr_counts are summed from. Counted there instead, after
-- the last shard, they took 0.55-0.6 s of vocab at 8M rows on 1-1.8 of the 2 cores, while one core sat idle for
-- 0.1-0.7 s at the end of sessionize, where one shard finished before the other
create or replace table shard_users (
    user_idx integer,
    n_events bigint,
    first_event_at timestamp,
    last_event_at timestamp
);

create or replace table shard_attr_counts (
    attr_code integer,
    n_events bigint,
    n_purchases bigint,
    latest_key hugeint,
    first_seen bigint,
    price double,
    price_key hugeint
);

create or replace table sessionized (
    user_idx integer,
    seq bigint,
    event_at timestamp,
    event_type_id tinyint,
    attr_code integer,
    price double,
    gap_seconds double,
    session_no integer,
    flags utinyint
);

-- the shard's valid events in codes, each with its place in the one sort of prepare (sorted_events)
create or replace view coded as
select
    u.user_code,
    s.event_at,
    s.session_hash,
    -- the event's item, category and brand in one code (one column where three cost a column each through
    -- the sort, the lags and the stored table); its item also in type_item below
    i.attr_code,
    s.price,
    -- ties at the same time: view, cart, remove_from_cart, purchase; then the item (item codes are
    -- below 2^30: prepare checks), in one 4-byte key, which is also all the sort carries of the event's
    -- type and item (sessionize_shard takes the type back from it, and attr_code names the item too: two
    -- columns fewer through the sort, 2.27 -> 2.14 CPU-s for the sort of the 8M-row synth log)
    ((case s.event_type_id when view_id() then 0 when cart_id() then 1 when remove_from_cart_id() then 2 else 3 end)::uinteger << 30)
        | i.item_code::uinteger as type_item,
    -- the session's hash, its top 30 bits (+ 1, at most 2^30; 0 for no session): sorts like the whole hash, nulls first
    coalesce((s.session_hash >> 34)::integer + 1, 0) as session_prefix
from staged as s
join user_keys as u using (user_key)
-- (item, category and brand in one join, on 03_clean.sql's item_hash)
join item_hash_codes as i using (item_hash)
where s.reject_reason is null
    -- the shard's users: a range of user keys, the same as a range of user codes (codes follow the
    -- keys' order); on the staged rows, so that only the shard's rows are joined and sorted
    and s.user_key between getvariable('shard_first_user_key') and getvariable('shard_last_user_key');

-- The order: user, time, type, item, session, then every other column, so that the result depends on
-- neither file order nor thread count. The sort compares only the first five, 24 bytes in all: DuckDB
-- sorts keys of up to 24 bytes about twice as fast as wider ones. Two events of one user at the same
-- time, of the same type and item, whose sessions agree in their top 30 bits but which differ in a
-- later column are left in no fixed order by that key: sessionize_shard below flags such neighbours
-- (tie_conflict, flag 2 of sessionized), and prepare then sorts again by every column (exact_order.sql), which gives the
-- same order wherever the short key already decides it.
create or replace view sorted_events as
select * from coded order by user_code, event_at, type_item, session_prefix;

-- one shard's pass over its sorted events
create or replace view sessionize_shard as
with with_previous as (
    -- the previous row of the sort, whoever's it is, column by column (scalar lags cost less than
    -- one lag of a struct of the columns)
    select
        *,
        lag(user_code) over () as prev_user_code,
        lag(event_at) over () as prev_event_at,
        lag(type_item) over () as prev_type_item,
        lag(session_prefix) over () as prev_session_prefix,
        lag(session_hash) over () as prev_hash,
        lag(attr_code) over () as prev_attr_code,
        lag(price) over () as prev_price
    from sorted_events
),

distinct_events as (
    -- exact duplicates, which the order puts next to each other, left out (a shard's first row has
    -- no previous one: its prev_user_code is NULL, and a user_code never is)
    select
        user_code, event_at,
        (case type_item >> 30 when 0 then view_id() when 1 then cart_id() when 2 then remove_from_cart_id()
            else purchase_id() end)::tinyint as event_type_id,
        session_hash, attr_code, price,
        prev_user_code is distinct from user_code as is_user_start,
        coalesce(
            prev_user_code = user_code and type_item >> 30 = 0 and prev_type_item = type_item
            and session_hash is not distinct from prev_hash
            and epoch(event_at) - epoch(prev_event_at) <= getvariable('session_gap_seconds'),
            false  -- a user's first event has no previous one: never a repeat (not NULL)
        ) as is_repeat_view,
        coalesce(
            prev_user_code = user_code and prev_event_at = event_at and prev_type_item = type_item
            and prev_session_prefix = session_prefix,
            false  -- a shard's first row has no previous one
        ) as tie_conflict,
        -- the time of a kept event (NULL on a collapsed view): carried forward below to the rows after it
        case when not is_repeat_view then event_at end as kept_at
    from with_previous
    where prev_user_code is distinct from user_code or prev_event_at is distinct from event_at
        or prev_type_item is distinct from type_item or prev_session_prefix is distinct from session_prefix
        or prev_hash is distinct from session_hash or prev_attr_code is distinct from attr_code
        or prev_price is distinct from price
),

running as (
    -- (last_value(... ignore nulls) over a frame up to the current row is a streaming fill-forward: 0.03 s
    -- per 8M rows, where a running max() takes 0.3 s through DuckDB's generic aggregate path)
    select
        *,
        last_value(kept_at ignore nulls) over (rows between unbounded preceding and current row) as last_kept_at,
        count(*) filter (where not is_repeat_view) over (rows between unbounded preceding and current row) as event_no
    from distinct_events
),

with_previous_kept as (
    -- the previous kept event: its time carried forward to the previous row (a user's first event is
    -- always kept, so on every later event of the user it is the user's own), its session the previous
    -- row's (a collapsed view has the session of the event it repeats)
    select
        *,
        lag(last_kept_at) over () as prev_kept_at,
        lag(session_hash) over () as prev_session_hash
    from running
),

flagged as (
    select
        *,
        case when not is_user_start then epoch(event_at) - epoch(prev_kept_at) end as gap_seconds,
        (
            is_user_start
            or epoch(event_at) - epoch(prev_kept_at) > getvariable('session_gap_seconds')
            or session_hash is distinct from prev_session_hash
        ) and not is_repeat_view as is_session_start
    from with_previous_kept
),

sessions as (
    select
        *,
        count(*) filter (where is_session_start) over (rows between unbounded preceding and current row) as session_total,
        last_value(case when is_user_start then event_no - 1 end ignore nulls)
            over (rows between unbounded preceding and current row) as events_before_user
    from flagged
),

numbered as (
    select
        *,
        last_value(case when is_user_start then session_total - 1 end ignore nulls)
            over (rows between unbounded preceding and current row) as sessions_before_user
    from sessions
),

final as (
    select
        (user_code + first_id() - 1)::integer as user_idx,
        case when not is_repeat_view then event_no - events_before_user end as seq,
        event_at, event_type_id, attr_code, price,
        case when not is_repeat_view then gap_seconds end as gap_seconds,
        case when not is_repeat_view then (session_total - sessions_before_user)::integer end as session_no,
        (is_repeat_view::utinyint | (tie_conflict::utinyint << 1) | (is_session_start::utinyint << 2)) as flags
    from numbered
)

select * from final;

-- the kept events, what vocab and encode read (the collapsed repeat views, flag 1, stay in sessionized
-- only to be counted)
create or replace view kept_events as
select * exclude (flags) from sessionized where flags & 1 = 0;

-- name: shard
insert into sessionized by name
select * from sessionize_shard;

-- name: shard_counts
-- (run by each shard's connection after its pass, in its transaction: kept_events holds only its rows, as
-- the shards commit once all have run; a user's events are all in one shard, an attr_code's in any)
insert into shard_users
select user_idx, count(*) as n_events, min(event_at) as first_event_at, max(event_at) as last_event_at
from kept_events
group by user_idx;

insert into shard_attr_counts
with keyed as (
    -- one integer that orders events by time, then user and position (unique per event): the
    -- "latest" in 05_vocab.sql; several times cheaper to compare than a struct of the three
    select *, (epoch_us(event_at)::hugeint << 64) + (user_idx::hugeint << 32) + seq as latest_key
    from kept_events
)

select
    attr_code,
    count(*) as n_events,
    count(*) filter (where event_type_id = purchase_id()) as n_purchases,
    max(latest_key) as latest_key,
    -- the first event's (user, position) packed in one BIGINT (seq < 2^32): the same order as the
    -- struct {user, seq}, at 0.12 s instead of 0.19 s at 8M rows
    min((user_idx::bigint << 32) + seq) as first_seen,
    -- the latest price and its event (arg_max skips NULLs: the latest event that has a price)
    arg_max(price, latest_key) as price,
    max(latest_key) filter (where price is not null) as price_key
from keyed
group by attr_code;

-- name: sort_once
-- (more than two shards) every shard's events sorted once, by all of DuckDB's threads, into a table in
-- that order, and sorted_events made the range of it of the shard's users (the query
-- "shard_of_sorted" sets the range). A shard that sorts its own events reads every staged row to find
-- them: 2 to 8 shards of the 8M-row synth log cost 7.1 to 9.6 CPU-seconds, and the cost grows with
-- the shards; sorted once, 7.4 to 7.6 (and at 2 shards, 0.2 s more: 2 shards sort their own).
create or replace table sorted_all as select * from sorted_events;
create or replace view sorted_events as
select * from sorted_all
where user_code between getvariable('shard_first_user_code') and getvariable('shard_last_user_code');

-- name: shard_of_sorted
-- (after sort_once) one shard's pass over its range of sorted_all: its users' codes from their keys
set variable shard_first_user_code = (select user_code from user_keys where user_key = getvariable('shard_first_user_key'));
set variable shard_last_user_code = (select user_code from user_keys where user_key = getvariable('shard_last_user_key'));
insert into sessionized by name
select * from sessionize_shard;
