-- clean: text keys to dense integer codes. Each text key is replaced by a dense code in the text's
-- own sort order (sorting by a code sorts by the text it stands for; user_session is the exception,
-- below), so that 04_sessionize.sql's sort, and every later step, compares and carries fixed-width
-- integers instead of text: several times cheaper. Codes turn back into text only in the
-- small vocabulary tables and the events' product_id.
-- inputs: staged (its valid events: reject_reason is NULL).
-- outputs: user_keys (user_key -> user_code, 1.. in user_key order), item_keys, category_keys,
--   category_codes, brand_keys (the same for each text column: every distinct non-NULL value of the
--   valid events), which 04_sessionize.sql joins to the events to sort them on codes. session_hash is
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
