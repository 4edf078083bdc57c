-- clean: the one sort of prepare. Each user's events in a total order (time, then every other
-- column, so that the result does not depend on file order or thread count); exact duplicates, which
-- that order puts next to each other, removed; consecutive repeats of the same view flagged. Later
-- steps read this table in its stored order (streaming window passes, no further sort of the events
-- until the final order by their integer ids).
-- inputs: staged (its valid events: reject_reason is NULL).
-- outputs: clean (grain: one distinct event, stored in the order above; exact duplicates are left out
--   and counted as the difference to staged's valid events). is_user_start marks a user's first event;
--   is_repeat_view a view that directly repeats the user's previous event, a view of the same item in
--   the same session within the gap (collapsed: counted, then left out of sessionized).
-- parameters: session_gap_seconds.
create or replace table clean as
with valid as (
    select
        user_key, event_at, event_type_id, item_key, session_key, category_key, category_code, brand, price,
        -- ties at the same time: view, cart, remove_from_cart, purchase
        case event_type_id when view_id() then 1 when cart_id() then 2 when remove_from_cart_id() then 3 else 4 end
            as type_rank
    from staged
    where reject_reason is null
),

ordered as (
    select *
    from valid
    order by user_key, event_at, type_rank, item_key, session_key nulls first, category_key nulls first,
        category_code nulls first, brand nulls first, price nulls first
),

with_previous as (
    -- a streaming pass over the sorted rows: the previous row, whoever's it is
    select
        *,
        lag({
            user_key: user_key, event_at: event_at, event_type_id: event_type_id, item_key: item_key,
            session_key: session_key, category_key: category_key, category_code: category_code, brand: brand,
            price: price
        }) over () as prev
    from ordered
),

final as (
    select
        user_key, event_at, event_type_id, item_key, session_key, category_key, category_code, brand, price,
        prev.user_key is distinct from user_key as is_user_start,
        coalesce(
            prev.user_key = user_key and event_type_id = view_id() and prev.event_type_id = view_id()
            and item_key = prev.item_key and session_key is not distinct from prev.session_key
            and epoch(event_at) - epoch(prev.event_at) <= getvariable('session_gap_seconds'),
            false  -- a user's first event has no previous one: never a repeat (not NULL)
        ) as is_repeat_view
    from with_previous
    where prev is distinct from {
        user_key: user_key, event_at: event_at, event_type_id: event_type_id, item_key: item_key,
        session_key: session_key, category_key: category_key, category_code: category_code, brand: brand,
        price: price
    }
)

select * from final;
