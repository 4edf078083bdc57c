-- exact_order: the order of 04_sessionize.sql's sorted_events by every column, for the rare input where
-- the short sort key leaves two different events of a user tied (04_sessionize.sql's tie_conflict).
-- It refines the short key (its first five columns are that key), so the order is the same wherever
-- the short key decides it. prepare then runs the shards of 04_sessionize.sql again.

-- name: exact_order
create or replace view sorted_events as
select * from coded
order by user_code, event_at, type_item, session_prefix, session_hash nulls first, category_key_code nulls first,
    category_code_code nulls first, brand_code nulls first, price nulls first;
