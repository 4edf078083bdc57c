-- audits: each named query must return zero rows on a prepared dataset; `prepare` runs them all
-- and refuses to finish when one fails. Parameters: max_len.

-- name: events_unique_key
select user_idx, seq, count(*) as n from events group by user_idx, seq having count(*) > 1;

-- name: events_ids_in_range
select e.* from events as e
where e.user_idx < first_id() or e.user_idx > (select max(user_idx) from users)
    or e.item_idx < unknown_id() or e.item_idx > (select max(item_idx) from items)
    or e.brand_idx < unknown_id() or e.category_idx < unknown_id()
    or event_type_name(e.event_type_id) is null;

-- name: sequences_unique_key
select split, user_idx, count(*) from sequences group by split, user_idx having count(*) > 1;

-- name: sequences_inputs_before_cutoff
select s.split, s.user_idx from sequences as s join windows as w using (split)
where s.last_event_at >= w.window_start
    or list_max(s.ts) >= epoch(w.window_start);

-- name: train_inputs_before_valid
select t.user_idx, t.chunk from train_sequences as t, windows as w
where w.split = 'valid' and t.last_event_at >= w.window_start;

-- name: truth_inside_window
select t.* from truth as t join windows as w using (split)
where t.first_purchase_at < w.window_start or t.first_purchase_at >= w.window_end;

-- name: sequences_fixed_width
select split, user_idx from sequences
where len(item_idx) <> getvariable('max_len') or len(ts) <> getvariable('max_len')
union all
select 'train', user_idx from train_sequences
where len(item_idx) <> getvariable('max_len') or len(purchase_target) <> getvariable('max_len');

-- name: padding_only_on_left
select split, user_idx from sequences
where list_count(list_filter(item_idx[getvariable('max_len') - least(n_events, getvariable('max_len')) + 1:], lambda x: x = pad_id())) > 0
    or list_count(list_filter(item_idx[:getvariable('max_len') - least(n_events, getvariable('max_len'))], lambda x: x <> pad_id())) > 0
union all
select 'train', user_idx from train_sequences
where list_count(list_filter(item_idx[getvariable('max_len') - n_events + 1:], lambda x: x = pad_id())) > 0
    or list_count(list_filter(item_idx[:getvariable('max_len') - n_events], lambda x: x <> pad_id())) > 0;

-- name: every_event_maps_back
select e.user_idx, e.seq from events as e
left join users as u using (user_idx)
left join items as i on i.product_id = e.product_id
where u.user_id is null or i.product_id is null or (i.item_idx <> e.item_idx);
