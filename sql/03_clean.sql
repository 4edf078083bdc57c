-- clean: text keys to dense integer codes. Each text key is replaced by a dense code in the text's
-- own sort order (sorting by a code sorts by the text it stands for; user_session is the exception,
-- below), so that 04_sessionize.sql's sort, and every later step, compares and carries fixed-width
-- integers instead of text: several times cheaper. Codes turn back into text only in the
-- small vocabulary tables and the events' product_id.
-- inputs: staged (its valid events: reject_reason is NULL; item_hash taken by the load).
-- outputs: user_keys (user_key -> user_code, 1.. in user_key order), item_attrs (one row per distinct
--   item, category_id, category_code and brand of the valid events as staged holds them, with their
--   cleaned texts, item_text, item_lens and item_hash), item_keys,
--   category_keys, category_codes, brand_keys (the same as user_keys for each of those text columns,
--   from item_attrs: every distinct non-NULL value of the valid events), and the view item_attr_codes
--   (item_hash -> the codes of its four cleaned texts, and attr_code, 1.., the combination's own code).
--   04_sessionize.sql joins the events to user_keys on the text and to item_attr_codes on item_hash,
--   which equals a join on the four texts where no two rows of item_attrs share a hash: prepare checks
--   (exact_keys.sql's hash_collisions) and otherwise makes the keys row numbers first (its exact_keys).
--   session_hash is
--   DuckDB's 64-bit hash() of user_session (NULL where absent; taken by the load): sessions are only
--   compared for equality and used as tie-breakers, and a dictionary of the millions of sessions would
--   cost more than the sort it saves. Events of one user at the same time, of the same type and item,
--   in different sessions are therefore ordered by their sessions' hash, not by the sessions' text: a
--   fixed order that depends only on the values (not on file order or threads) and on DuckDB's hash()
--   (the manifest's session_hash_check, covered by its content hash, tells when that differs).
-- parameters: none.
create or replace table user_keys as
select user_key, (row_number() over (order by user_key))::integer as user_code
from (select distinct user_key from staged where reject_reason is null);

-- (one distinct over the four texts, as staged holds them: item_text and item_lens, 0.6 CPU-s at 8M rows
-- where a distinct over the four took 1.33, and the four per column 0.73 but left 3 more joins to
-- sessionize; the texts are taken apart and the hash taken again here, on the distinct rows only. The
-- category and brand texts are stored as the file wrote them (00_setup.sql's attr_text) and cleaned here:
-- two rows may then hold the same four cleaned texts, " Acme" and "Acme", and share their codes)
-- (item_part reads an empty part as NULL, so trimmed_text is clean_text's form for every format here)
create or replace table item_attrs as
select
    item_key,
    trimmed_text(category_key) as category_key,
    trimmed_text(category_code) as category_code,
    trimmed_text(brand) as brand,
    item_text, item_lens, item_hash
from (
    select unnest(item_texts(item_text, item_lens)), item_text, item_lens, hash(item_text, item_lens) as item_hash
    from (select distinct item_text, item_lens from staged where reject_reason is null)
);

create or replace table item_keys as
select item_key, (row_number() over (order by item_key))::integer as item_code
from (select distinct item_key from item_attrs);

create or replace table category_keys as
select category_key, (row_number() over (order by category_key))::integer as category_key_code
from (select distinct category_key from item_attrs where category_key is not null);

create or replace table category_codes as
select category_code, (row_number() over (order by category_code))::integer as category_code_code
from (select distinct category_code from item_attrs where category_code is not null);

create or replace table brand_keys as
select brand, (row_number() over (order by brand))::integer as brand_code
from (select distinct brand from item_attrs where brand is not null);

-- (a view: exact_keys.sql may replace item_attrs' hash after this step; 04_sessionize.sql stores it once
-- as item_hash_codes and attr_codes). attr_code numbers the distinct codes in item, then category and brand
-- code order (NULL first), so that among one item's events ordering by it orders by the three codes
-- (exact_order.sql); rows of item_attrs whose texts clean to the same four share it.
create or replace view item_attr_codes as
select
    a.item_hash, i.item_code, ck.category_key_code, cc.category_code_code, b.brand_code,
    (dense_rank() over (order by i.item_code, ck.category_key_code nulls first, cc.category_code_code nulls first,
        b.brand_code nulls first))::integer as attr_code
from item_attrs as a
join item_keys as i using (item_key)
left join category_keys as ck using (category_key)
left join category_codes as cc using (category_code)
left join brand_keys as b using (brand);
