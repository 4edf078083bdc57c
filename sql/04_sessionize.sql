-- sessionize: positions, gaps and sessions of each user's kept events, in streaming window passes
-- over clean's stored order (user, then time): no sort, and only fixed-width codes in the window
-- rows. A session is the raw user_session where present, split further (and created where missing)
-- by an inactivity gap. Window sums run over all users at once; a user's own count is the running
-- total minus its value before the user's first event. Running counts use count(*) (filter (...)):
-- a BIGINT, where sum() of integers would be a HUGEINT, twice as wide and slower in every later pass.
-- inputs: clean (collapsed repeat views left out).
-- outputs: sessionized (grain: one event; key user_idx, seq; in clean's order; text columns still as
--   the codes of clean) with user_idx (users numbered in user_key order from first_id()), seq
--   (1-based position in the user's history), gap_seconds since the user's previous event,
--   is_session_start and session_no (1-based within the user). (Each event's next event, purchase and
--   cart are found when loading: data/sequences.py.)
-- parameters: session_gap_seconds.
create or replace table sessionized as
with kept as (
    select * from clean where not is_repeat_view
),

running as (
    select
        *,
        lag({event_at: event_at, session_hash: session_hash}) over () as prev,
        count(*) over (rows between unbounded preceding and current row) as event_no
    from kept
),

flagged as (
    select
        *,
        case when not is_user_start then epoch(event_at) - epoch(prev.event_at) end as gap_seconds,
        (
            is_user_start
            or epoch(event_at) - epoch(prev.event_at) > getvariable('session_gap_seconds')
            or session_hash is distinct from prev.session_hash
        ) as is_session_start
    from running
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
        event_no - events_before_user as seq,
        event_at, event_type_id, item_code, category_key_code, category_code_code, brand_code, price,
        gap_seconds,
        is_session_start,
        (session_total - sessions_before_user)::integer as session_no
    from numbered
)

select * from final;
