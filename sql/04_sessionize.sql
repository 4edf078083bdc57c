-- sessionize: positions, gaps and sessions of each user's kept events, in streaming window passes
-- over clean's stored order (user, then time): no sort, and only fixed-width codes in the window
-- rows. A session is the raw user_session where present, split further (and created where missing)
-- by an inactivity gap. Window sums run over all users at once; a user's own count is the running
-- total minus its value before the user's first event. Running counts are count(*) filter (...): a
-- BIGINT, where sum() of integers would be a HUGEINT, twice as wide and slower in every later pass.
-- inputs: clean (collapsed repeat views left out).
-- outputs: sessionized (grain: one event; key user_idx, seq; in clean's order; text columns still as
--   the codes of clean) with user_idx (users numbered in user_key order from first_id()), seq
--   (1-based position in the user's history), gap_seconds since the user's previous event,
--   is_session_start, session_no (1-based within the user), the user's next event (next_item_code,
--   next_at) and running counts of purchases and carts over the whole table (purchase_no, cart_no):
--   the user's next purchase after an event is the purchase numbered purchase_no + 1, if it is the
--   same user's.
-- parameters: session_gap_seconds.
create or replace table sessionized as
with kept as (
    select * from clean where not is_repeat_view
),

running as (
    select
        *,
        lag({event_at: event_at, session_hash: session_hash}) over () as prev,
        lead({user_code: user_code, item_code: item_code, event_at: event_at}) over () as next,
        count(*) over (rows between unbounded preceding and current row) as event_no,
        count(*) filter (where event_type_id = purchase_id()) over (rows between unbounded preceding and current row)
            as purchase_no,
        count(*) filter (where event_type_id = cart_id()) over (rows between unbounded preceding and current row)
            as cart_no
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
        (session_total - sessions_before_user)::integer as session_no,
        case when next.user_code = user_code then next.item_code end as next_item_code,
        case when next.user_code = user_code then next.event_at end as next_at,
        purchase_no,
        cart_no
    from numbered
)

select * from final;
