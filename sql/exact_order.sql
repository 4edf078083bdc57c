-- exact_order: the order of 04_sessionize.sql's sorted_events by every column, for the rare input where
-- the short sort key leaves two different events of a user tied (04_sessionize.sql's tie_conflict).
-- It refines the short key (its first five columns are that key), so the order is the same wherever
-- the short key decides it. (Tied events have one item: among its attr_codes, the code orders like the
-- category and brand codes, NULL first: 03_clean.sql.) prepare then runs the shards of 04_sessionize.sql again.

-- name: exact_order
create or replace view sorted_events as
select * from coded
order by user_code, event_at, type_item, session_prefix, session_hash nulls first, attr_code, price nulls first;
