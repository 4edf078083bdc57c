-- audits: each named query must return zero rows on a prepared dataset; `prepare` runs them all
-- and refuses to finish when one fails. Parameters: none. (The sequences cut from events when
-- loading are checked by data/sequences.py and the tests.)

-- name: events_unique_key
-- each event's (user_idx, seq) is greater than the one stored before it: the key is unique and the
-- table is in the order the loader reads (one streaming pass instead of a group by)
-- (two scalar lags: 0.07-0.08 s at 8M rows against 0.11-0.12 s for one lag of a struct of the two)
select user_idx, seq from (
    select user_idx, seq, lag(user_idx) over () as prev_user_idx, lag(seq) over () as prev_seq from events
)
where prev_user_idx > user_idx or (prev_user_idx = user_idx and prev_seq >= seq);

-- name: events_ids_in_range
-- (the key of each bad event, not e.*: every column of events.parquet read cost 4x the ids it checks; a
-- NULL id fails too, as the test of it is NULL)
select e.user_idx, e.seq from events as e
where not coalesce(
    e.user_idx between first_id() and (select max(user_idx) from users)
    and e.item_idx between unknown_id() and (select max(item_idx) from items)
    and e.brand_idx >= unknown_id() and e.category_idx >= unknown_id()
    and event_type_name(e.event_type_id) is not null,
    false
);

-- name: truth_inside_window
select t.* from truth as t join windows as w using (split)
where t.first_purchase_at < w.window_start or t.first_purchase_at >= w.window_end;

-- name: every_event_maps_back
-- each event's user is a row of users, and its item_code a row of items with the event's item_idx: looked
-- up by position, as users are numbered from first_id() and items' codes from 1, each with no gaps and
-- no NULL raw id, which the query checks (otherwise every event fails): two hash joins of the events
-- cost 0.18-0.22 s at 8M rows, the lookups about half
with maps as (
    select
        (select count(*) = count(distinct user_idx) and min(user_idx) = first_id()
            and max(user_idx) = count(*) + first_id() - 1 and count(user_id) = count(*) from users) as users_dense,
        (select max(user_idx) from users) as last_user,
        (select count(*) = count(distinct item_code) and min(item_code) = 1 and max(item_code) = count(*)
            and count(product_id) = count(*) from items) as items_dense,
        (select list(item_idx order by item_code) from items) as item_idx_of
)

select e.user_idx, e.seq from events as e, maps as m
where not coalesce(m.users_dense and m.items_dense, false)
    or e.user_idx not between first_id() and m.last_user
    or e.item_code not between 1 and len(m.item_idx_of)
    or m.item_idx_of[e.item_code] is distinct from e.item_idx;
