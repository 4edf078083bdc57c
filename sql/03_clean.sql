-- clean: text keys to dense integer codes, and the events' one sort order. Each text key is replaced
-- by a dense code in the text's own sort order (sorting by a code sorts by the text it stands for;
-- user_session is the exception, below), so that the sort, and every later step, compares and carries
-- fixed-width integers instead of text: several times cheaper. Codes turn back into text only in the
-- small vocabulary tables and the events' product_id.
-- inputs: staged (its valid events: reject_reason is NULL).
-- outputs: user_keys (user_key -> user_code, 1.. in user_key order), item_keys, category_keys,
--   category_codes, brand_keys (the same for each text column: every distinct non-NULL value of the
--   valid events); the views coded (the valid events in codes) and sorted_events (the same, in the
--   order below; 04_sessionize.sql reads it once). session_hash is the 128-bit md5 of user_session
--   (NULL where absent; taken by the load): sessions are only compared for equality and used as
--   tie-breakers, and a dictionary of the millions of sessions would cost more than the sort it
--   saves. Events of one user at the same time, of the same type and item, in different sessions are
--   therefore ordered by their sessions' md5, not by the sessions' text: a fixed order that depends
--   only on the values (not on file order, threads or DuckDB's version).
-- parameters: none.
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

-- the valid events in codes, each with its place in the one sort of prepare (sorted_events)
create or replace temp view coded as
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
    -- ties at the same time: view, cart, remove_from_cart, purchase; then the item (item codes are
    -- below 2^30: prepare checks), in one 4-byte key
    ((case s.event_type_id when view_id() then 0 when cart_id() then 1 when remove_from_cart_id() then 2 else 3 end)::uinteger << 30)
        | i.item_code::uinteger as type_item,
    -- the session's md5, its top 30 bits (+ 1, at most 2^30; 0 for no session): sorts like the whole md5, nulls first
    coalesce((s.session_hash >> 98)::integer + 1, 0) as session_prefix
from staged as s
join user_keys as u using (user_key)
join item_keys as i using (item_key)
left join category_keys as ck using (category_key)
left join category_codes as cc using (category_code)
left join brand_keys as b using (brand)
where s.reject_reason is null;

-- The order: user, time, type, item, session, then every other column, so that the result depends on
-- neither file order nor thread count. The sort compares only the first five, 24 bytes in all: DuckDB
-- sorts keys of up to 24 bytes about twice as fast as wider ones. Two events of one user at the same
-- time, of the same type and item, whose sessions agree in their top 30 bits but which differ in a
-- later column are left in no fixed order by that key: 04_sessionize.sql flags such neighbours
-- (tie_conflict), and prepare then sorts again by every column (exact_order.sql), which gives the
-- same order wherever the short key already decides it.
create or replace temp view sorted_events as
select * from coded order by user_code, event_at, type_item, session_prefix;
