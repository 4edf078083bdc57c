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
-- (the key of each bad event, not e.*: every column of events.parquet read cost 4x the ids it checks)
select e.user_idx, e.seq from events as e
where e.user_idx < first_id() or e.user_idx > (select max(user_idx) from users)
    or e.item_idx < unknown_id() or e.item_idx > (select max(item_idx) from items)
    or e.brand_idx < unknown_id() or e.category_idx < unknown_id()
    or event_type_name(e.event_type_id) is null;

-- name: truth_inside_window
select t.* from truth as t join windows as w using (split)
where t.first_purchase_at < w.window_start or t.first_purchase_at >= w.window_end;

-- name: every_event_maps_back
select e.user_idx, e.seq from events as e
left join users as u using (user_idx)
left join items as i using (item_code)
where u.user_id is null or i.product_id is null or (i.item_idx <> e.item_idx);
