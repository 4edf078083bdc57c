-- sessionize: one streaming pass over the sorted events (03_clean.sql's sorted_events): exact
-- duplicates left out, repeat views flagged, then positions, gaps and sessions of each user's kept
-- events. No table of the sorted events is stored in between: the window passes read the sort's output
-- directly, and only fixed-width codes travel through them. Window sums run over all users at once;
-- a user's own count is the running total minus its value before the user's first event. Running
-- counts use count(*) (filter (...)): a BIGINT, where sum() of integers would be a HUGEINT.
-- inputs: sorted_events.
-- outputs: sessionized (grain: one distinct event, in the sort's order; exact duplicates are left out
--   and counted as the difference to staged's valid events; text columns as the codes of 03_clean.sql):
--   is_repeat_view marks a view that directly repeats the user's previous event (a view of the same
--   item in the same session within the gap): it is collapsed, kept in this table only to be counted,
--   and every column below is NULL on it. The kept events have user_idx (users numbered in user_key
--   order from first_id()), seq (1-based position in the user's kept history), gap_seconds since the
--   user's previous kept event, is_session_start and session_no (1-based within the user);
--   is_user_start marks a user's first event (never a collapsed one). A session
--   is the raw user_session where present, split further (and created where missing) by an inactivity
--   gap. tie_conflict marks an event that the short sort key could not order against the one before
--   it (prepare then sorts by every column and runs this file again); the view kept_events, its
--   rows without the collapsed views. (Each event's next event,
--   purchase and cart are found when loading: data/sequences.py.)
-- parameters: session_gap_seconds.
create or replace table sessionized as
with as_rows as (
    -- every column of the sort in one value, to compare a row with the one before it
    select
        *,
        {
            user_code: user_code, event_at: event_at, type_item: type_item, session_prefix: session_prefix,
            session_hash: session_hash, category_key_code: category_key_code,
            category_code_code: category_code_code, brand_code: brand_code, price: price
        } as this
    from sorted_events
),

with_previous as (
    -- the previous row of the sort, whoever's it is
    select *, lag(this) over () as prev from as_rows
),

distinct_events as (
    -- exact duplicates, which the order puts next to each other, left out
    select
        user_code, event_at, event_type_id, item_code, session_hash, category_key_code, category_code_code,
        brand_code, price,
        prev.user_code is distinct from user_code as is_user_start,
        coalesce(
            prev.user_code = user_code and event_type_id = view_id() and prev.type_item = type_item
            and session_hash is not distinct from prev.session_hash
            and epoch(event_at) - epoch(prev.event_at) <= getvariable('session_gap_seconds'),
            false  -- a user's first event has no previous one: never a repeat (not NULL)
        ) as is_repeat_view,
        prev.user_code = user_code and prev.event_at = event_at and prev.type_item = type_item
            and prev.session_prefix = session_prefix as tie_conflict,
        -- (user, time) packed in one number that only grows along the sort: its running maximum over
        -- the kept events is the latest kept event's
        case when not is_repeat_view then (user_code::hugeint << 64) + epoch_us(event_at) end as kept_at_key
    from with_previous
    where prev is distinct from this
),

running as (
    select
        *,
        max(kept_at_key) over (rows between unbounded preceding and current row) as kept_at_max,
        count(*) filter (where not is_repeat_view) over (rows between unbounded preceding and current row) as event_no
    from distinct_events
),

with_previous_kept as (
    -- the previous kept event: its time from the running maximum, its session from the previous row
    -- (a collapsed view has the session of the event it repeats)
    select
        *,
        make_timestamp((lag(kept_at_max) over () & 18446744073709551615::hugeint)::bigint) as prev_kept_at,
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
        max(case when is_user_start then event_no - 1 end) over (rows between unbounded preceding and current row)
            as events_before_user
    from flagged
),

numbered as (
    select
        *,
        max(case when is_user_start then session_total - 1 end) over (rows between unbounded preceding and current row)
            as sessions_before_user
    from sessions
),

final as (
    select
        (user_code + first_id() - 1)::integer as user_idx,
        case when not is_repeat_view then event_no - events_before_user end as seq,
        event_at, event_type_id, item_code, category_key_code, category_code_code, brand_code, price,
        case when not is_repeat_view then gap_seconds end as gap_seconds,
        case when not is_repeat_view then is_session_start end as is_session_start,
        case when not is_repeat_view then (session_total - sessions_before_user)::integer end as session_no,
        is_user_start,
        is_repeat_view,
        tie_conflict
    from numbered
)

select * from final;

-- the kept events, what vocab and encode read (the collapsed repeat views stay in sessionized only to be counted)
create or replace temp view kept_events as
select * exclude (is_repeat_view, tie_conflict) from sessionized where not is_repeat_view;
