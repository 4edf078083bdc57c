-- encode: one row per event with dense ids and the features the model reads.
-- inputs: kept_events (04_sessionize.sql: user_idx, seq, sessions; item, category and brand as one
--   attr_code), attr_codes and the id tables of 05_vocab.sql (item_ids, brand_ids, category_pairs,
--   categories).
-- outputs: the view encoded_events (grain: one event; key user_idx, seq; sorted by it, so that the file
--   holds the same rows in the same order run to run; its Parquet row groups follow the sort's output
--   chunks, which two runs may cut at other rows, so its bytes can differ where its rows do not), which
--   prepare writes straight to
--   events.parquet (no table of the events is stored: the steps after it read the file, through the view
--   events below):
--   event_type_id 1 view, 2 cart, 3 purchase, 4 remove_from_cart (0 is padding);
--   price_bucket 1 unknown or zero, else 2 + floor(2 * log2(1 + price)) capped at 31;
--   gap_bucket 1 for the user's first event, else 2 + floor(log2(1 + seconds since previous)) capped at 27.
--   item_code is the item's number among every item of the log (items' item_code, with its product_id):
--   it maps each event back to its raw item, one too rare for an id (item_idx 1) too. The events store
--   no product_id and no epoch-seconds ts: writing the text ids cost 0.45 s of the 2 s step at 8M rows
--   (the integer code 0.1 s), ts 0.25 s; read.sql takes ts from event_at. Nor what a reader takes from
--   the other columns (schema 7): hour_id and weekday_id (read.sql takes them from event_at) and whether
--   an event starts a session (a new session_no of the user); each column cost about 0.15 CPU-s to write. The training targets (each event's next event, purchase and
--   cart) are found from these rows when loading (data/sequences.py), so the table stores no copy of them.
-- The ids are joined to the events on attr_code, and the rows sorted by user_idx, seq (a join does not
--   keep its input's order). They were looked up by position in four lists indexed by attr_code, a
--   one-row table cross joined to the events to keep the scan's order with no sort; but DuckDB's cross
--   product scans its other side again for every 2,048 events, and a scan copies the lists' elements:
--   a cost of events x attr codes. At 50M rows (195,307 attr codes) the write took 12.0-13.5 s, 8.4-10.0
--   s joined and sorted (two rounds each, the same rows); at 8M rows (31,824) 1.38-1.54 s against
--   1.15-1.45 s (three rounds). The full REES46 log (411M events) would copy the lists for 200K chunks.
--   prepare still checks the written order (audits.sql: events_unique_key), and sorts the file again
--   where it is not (the query sort_file).
-- parameters: events_file (the events.parquet prepare wrote, for the view events).

-- name: define
create or replace view encoded_events as
with attr_ids as (
    -- each attr_code's item, brand and category ids (its item_idx NULL only for an item with no kept event;
    -- its category the one 05_vocab.sql's category_pairs names for its pair of category codes)
    select
        a.attr_code,
        a.item_code,
        i.item_idx,
        coalesce(b.brand_idx, unknown_id()) as brand_idx,
        coalesce(c.category_idx, unknown_id()) as category_idx
    from attr_codes as a
    left join item_ids as i using (item_code)
    left join brand_ids as b using (brand_code)
    left join category_pairs as p
        on p.category_key_code is not distinct from a.category_key_code
        and p.category_code_code is not distinct from a.category_code_code
    left join categories as c on c.category = p.category
),

joined as (
    select
        s.user_idx,
        s.seq,
        s.event_at,
        s.event_type_id,
        a.item_idx,
        a.item_code,
        a.brand_idx,
        a.category_idx,
        case when s.price is null or s.price <= 0 then unknown_id()
            else least(2 + floor(2 * log2(1 + s.price)), 31) end::tinyint as price_bucket,
        case when s.gap_seconds is null then unknown_id()
            else least(2 + floor(log2(1 + s.gap_seconds)), 27) end::tinyint as gap_bucket,
        s.session_no
    -- (a left join: an event whose attr_code had no row would keep its row, with NULL ids, as a list
    -- lookup out of range gave, and the audit events_ids_in_range would name it: a NULL id fails it)
    from kept_events as s
    left join attr_ids as a using (attr_code)
)

select * from joined order by user_idx, seq;

-- name: events
-- the written events, what split, the audits and the manifest read
create or replace view events as select * from read_parquet(getvariable('events_file'));

-- name: sort_file
-- events.parquet in user_idx, seq order (for prepare to write beside it and put in its place), where
-- the audit events_unique_key found it out of order
create or replace view events_in_order as select * from events order by user_idx, seq;
