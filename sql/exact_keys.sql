-- exact_keys: the key of 03_clean.sql's item_attrs made exact, for the input where two of its rows (two
-- distinct combinations of item, category_id, category_code and brand) share DuckDB's 64-bit hash():
-- 04_sessionize.sql joins the events to their codes on item_hash, which equals a join on the four texts
-- only where each hash names one row.
-- inputs: staged, item_attrs. outputs: the same, item_hash replaced by a row number of item_attrs, on the
-- valid events of staged by a join on the four texts (as staged holds them: item_text and item_lens,
-- 00_setup.sql). The codes, and so every output table, are those of a join on the text.

-- name: hash_collisions
-- the rows of item_attrs whose hash another row has too (0: the hashes are exact keys)
select count(*) - count(distinct item_hash) as items from item_attrs;

-- name: exact_keys
create or replace table item_attrs as
select * replace ((row_number() over (order by item_key, category_key, category_code, brand, item_text, item_lens))::ubigint as item_hash)
from item_attrs;
update staged set item_hash = a.item_hash
from item_attrs as a
where staged.reject_reason is null and staged.item_text = a.item_text and staged.item_lens = a.item_lens;
