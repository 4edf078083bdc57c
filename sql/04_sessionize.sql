-- sessionize: a session is the raw user_session where present, split further (and created where
-- missing) by an inactivity gap.
-- inputs: clean (collapsed repeat views left out).
-- outputs: sessionized (grain: one event; key user_key, seq) with gap_seconds since the user's
--   previous event, is_session_start and session_no (1-based within the user).
-- parameters: session_gap_seconds.
create or replace table sessionized as
with events as (
    select * from clean where not is_repeat_view
),

with_previous as (
    select
        *,
        epoch(event_at) - epoch(lag(event_at) over w) as gap_seconds,
        lag(session_key) over w as prev_session
    from events
    window w as (partition by user_key order by seq)
),

flagged as (
    select
        *,
        (
            gap_seconds is null
            or gap_seconds > getvariable('session_gap_seconds')
            or session_key is distinct from prev_session
        ) as is_session_start
    from with_previous
),

final as (
    select
        user_key, seq, event_at, event_type_id, item_key, session_key, category_key, category_code, brand,
        price, gap_seconds, is_session_start,
        sum(is_session_start::integer) over (partition by user_key order by seq)::integer as session_no
    from flagged
)

select * from final;
