-- encode: one row per event with dense ids and the features the model reads.
-- inputs: kept_events (04_sessionize.sql: user_idx, seq, sessions; text columns as codes), item_ids, brand_ids,
--   category_ids (the maps from codes to ids of 05_vocab.sql).
-- outputs: the view encoded_events (grain: one event; key user_idx, seq; ordered by user_idx, seq, so
--   that the files are byte-identical run to run), which prepare writes straight to events.parquet (no
--   table of the events is stored: the steps after it read the file, through the view events below):
--   event_type_id 1 view, 2 cart, 3 purchase, 4 remove_from_cart (0 is padding);
--   price_bucket 1 unknown or zero, else 2 + floor(2 * log2(1 + price)) capped at 31;
--   hour_id 1..24, weekday_id 1..7 (ISO, Monday = 1);
--   gap_bucket 1 for the user's first event, else 2 + floor(log2(1 + seconds since previous)) capped at 27.
--   item_code is the item's number among every item of the log (items' item_code, with its product_id):
--   it maps each event back to its raw item, one too rare for an id (item_idx 1) too. The events store
--   no product_id and no epoch-seconds ts: writing the text ids cost 0.45 s of the 2 s step at 8M rows
--   (the integer code 0.1 s), ts 0.25 s; read.sql takes ts from event_at. The training targets (each event's next event, purchase and
--   cart) are found from these rows when loading (data/sequences.py), so the table stores no copy of them.
-- parameters: events_file (the events.parquet prepare wrote, for the view events).

-- name: define
create or replace view encoded_events as
with joined as (
    select
        s.user_idx,
        s.seq,
        s.event_at,
        s.event_type_id,
        i.item_idx,
        s.item_code,
        coalesce(b.brand_idx, unknown_id()) as brand_idx,
        coalesce(c.category_idx, unknown_id()) as category_idx,
        case when s.price is null or s.price <= 0 then unknown_id()
            else least(2 + floor(2 * log2(1 + s.price)), 31) end::tinyint as price_bucket,
        (hour(s.event_at) + 1)::tinyint as hour_id,
        isodow(s.event_at)::tinyint as weekday_id,
        case when s.gap_seconds is null then unknown_id()
            else least(2 + floor(log2(1 + s.gap_seconds)), 27) end::tinyint as gap_bucket,
        s.session_no,
        s.is_session_start
    from kept_events as s
    join item_ids as i using (item_code)
    left join brand_ids as b using (brand_code)
    left join category_ids as c
        on c.category_key_code is not distinct from s.category_key_code
        and c.category_code_code is not distinct from s.category_code_code
)

select * from joined order by user_idx, seq;

-- name: events
-- the written events, what split, the audits and the manifest read
create or replace view events as select * from read_parquet(getvariable('events_file'));
