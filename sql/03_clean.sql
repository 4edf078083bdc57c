-- clean: the one sort of prepare, on integer codes. Text keys are replaced first by dense codes in
-- their own sort order (sorting by a code sorts by the text it stands for; user_session is the
-- exception, below), then the events are sorted by fixed-width keys: several times cheaper than
-- sorting, comparing and carrying the text through every later step. Each user's events are put in a
-- total order (time, then every other column, so that the result does not depend on file order or
-- thread count); exact duplicates, which that order puts next to each other, removed; consecutive
-- repeats of the same view flagged. Later steps read this table in its stored order (streaming
-- window passes, no further sort of the events until the final order by their integer ids) and turn
-- codes back into text only in the small vocabulary tables and the events' product_id.
-- inputs: staged (its valid events: reject_reason is NULL).
-- outputs: user_keys (user_key -> user_code, 1.. in user_key order), item_keys, category_keys,
--   category_codes, brand_keys (the same for each text column: every distinct non-NULL value of the
--   valid events); clean (grain: one distinct event, stored in the order above, in codes; exact
--   duplicates are left out and counted as the difference to staged's valid events). session_hash is
--   the 128-bit md5 of user_session (NULL where absent; taken by the load): sessions are only
--   compared for equality and used as the last tie-breakers, and a dictionary of the millions of
--   sessions would cost more than the sort it saves. Events of one user at the same time, of the same
--   type and item, in different sessions are therefore ordered by their sessions' md5, not by the
--   sessions' text: a fixed order that depends only on the values (not on file order, threads or
--   DuckDB's version). is_user_start marks a user's first event; is_repeat_view a view that
--   directly repeats the user's previous event, a view of the same item in the same session within
--   the gap (collapsed: counted, then left out of sessionized).
-- parameters: session_gap_seconds.
create or replace table user_keys as
select user_key, (row_number() over (order by user_key))::integer as user_code
from (select distinct user_key from staged where reject_reason is null);

create or replace table item_keys as
select item_key, (row_number() over (order by item_key))::integer as item_code
from (select distinct item_key from staged where reject_reason is null);

create or replace table category_keys as
select category_key, (row_number() over (order by category_key))::integer as category_key_code
from (select distinct category_key from staged where reject_reason is null and category_key is not null);

create or replace table category_codes as
select category_code, (row_number() over (order by category_code))::integer as category_code_code
from (select distinct category_code from staged where reject_reason is null and category_code is not null);

create or replace table brand_keys as
select brand, (row_number() over (order by brand))::integer as brand_code
from (select distinct brand from staged where reject_reason is null and brand is not null);

create or replace table clean as
with valid as (
    select
        u.user_code,
        s.event_at,
        s.event_type_id,
        i.item_code,
        s.session_hash,
        ck.category_key_code,
        cc.category_code_code,
        b.brand_code,
        s.price,
        -- ties at the same time: view, cart, remove_from_cart, purchase
        case s.event_type_id when view_id() then 1 when cart_id() then 2 when remove_from_cart_id() then 3 else 4 end
            as type_rank
    from staged as s
    join user_keys as u using (user_key)
    join item_keys as i using (item_key)
    left join category_keys as ck using (category_key)
    left join category_codes as cc using (category_code)
    left join brand_keys as b using (brand)
    where s.reject_reason is null
),

ordered as (
    select *
    from valid
    order by user_code, event_at, type_rank, item_code, session_hash nulls first, category_key_code nulls first,
        category_code_code nulls first, brand_code nulls first, price nulls first
),

with_previous as (
    -- a streaming pass over the sorted rows: the previous row, whoever's it is
    select
        *,
        lag({
            user_code: user_code, event_at: event_at, event_type_id: event_type_id, item_code: item_code,
            session_hash: session_hash, category_key_code: category_key_code,
            category_code_code: category_code_code, brand_code: brand_code, price: price
        }) over () as prev
    from ordered
),

final as (
    select
        user_code, event_at, event_type_id, item_code, session_hash, category_key_code, category_code_code,
        brand_code, price,
        prev.user_code is distinct from user_code as is_user_start,
        coalesce(
            prev.user_code = user_code and event_type_id = view_id() and prev.event_type_id = view_id()
            and item_code = prev.item_code and session_hash is not distinct from prev.session_hash
            and epoch(event_at) - epoch(prev.event_at) <= getvariable('session_gap_seconds'),
            false  -- a user's first event has no previous one: never a repeat (not NULL)
        ) as is_repeat_view
    from with_previous
    where prev is distinct from {
        user_code: user_code, event_at: event_at, event_type_id: event_type_id, item_code: item_code,
        session_hash: session_hash, category_key_code: category_key_code,
        category_code_code: category_code_code, brand_code: brand_code, price: price
    }
)

select * from final;
