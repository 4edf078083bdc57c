-- clean: remove exact duplicate events, collapse consecutive repeats of the same view, and order
-- each user's events.
-- inputs: staged (its valid events: reject_reason is NULL).
-- outputs: clean (grain: one distinct event; copies = how many identical raw rows it stood for).
--   is_repeat_view marks a view that directly repeats the user's previous view of the same item in
--   the same session (collapsed: counted, then left out of sessionized). seq is the 1-based position
--   of a kept event in its user's history, ordered by time and then by every other column (a total
--   order, so the result does not depend on file order or thread count).
-- parameters: session_gap_seconds (a repeated view after a longer gap is a new visit, kept).
create or replace table clean as
with deduped as (
    select
        event_at, event_type_id, item_key, user_key, session_key, category_key, category_code, brand, price,
        count(*) as copies
    from staged
    where reject_reason is null
    group by all
),

ordered as (
    select
        *,
        -- ties at the same time: view, cart, remove_from_cart, purchase
        case event_type_id when view_id() then 1 when cart_id() then 2 when remove_from_cart_id() then 3 else 4 end
            as type_rank
    from deduped
),

with_previous as (
    select
        *,
        lag(event_type_id) over w as prev_type,
        lag(item_key) over w as prev_item,
        lag(session_key) over w as prev_session,
        lag(event_at) over w as prev_at
    from ordered
    window w as (
        partition by user_key
        order by event_at, type_rank, item_key, session_key nulls first, category_key nulls first,
            category_code nulls first, brand nulls first, price nulls first
    )
),

flagged as (
    select
        *,
        coalesce(
            event_type_id = view_id() and prev_type = view_id() and item_key = prev_item
            and session_key is not distinct from prev_session
            and epoch(event_at) - epoch(prev_at) <= getvariable('session_gap_seconds'),
            false  -- a user's first event has no previous one: never a repeat (not NULL)
        ) as is_repeat_view
    from with_previous
),

final as (
    select
        user_key,
        row_number() over (
            partition by user_key, is_repeat_view
            order by event_at, type_rank, item_key, session_key nulls first, category_key nulls first,
                category_code nulls first, brand nulls first, price nulls first
        ) as seq,
        event_at, event_type_id, item_key, session_key, category_key, category_code, brand, price, copies,
        is_repeat_view
    from flagged
)

select * from final;
