-- stats: named queries whose single row goes into manifest.json and the prepare summary.

-- name: counts_input
-- taken after sessionize, before staged is dropped
select
    (select count(*) from staged) + (select count(*) from raw_rejects) as rows_read,
    (select count(*) from rejects) as rows_rejected,
    (select count(*) from staged where reject_reason = 'ignored') as rows_ignored,
    (select count(*) from staged where reject_reason is null) as rows_valid;

-- name: counts_clean
-- taken after sessionize: its rows are the distinct events, the collapsed repeat views among them, and
-- the sessions (the kept events that start one)
select
    (select count(*) from sessionized) as rows_kept,
    (select count(*) from sessionized where flags & 1 = 1) as rows_collapsed,
    (select count(*) from sessionized where flags & 4 = 4) as n_sessions;

-- name: counts
-- parameters: n_sessions (counts_clean's)
select
    (select count(*) from events) as n_events,
    (select count(*) from users) as n_users,
    (select count(*) from items) as n_raw_items,
    (select coalesce(max(item_idx), unknown_id()) - unknown_id() from items) as n_items,
    (select coalesce(max(brand_idx), unknown_id()) - unknown_id() from brands) as n_brands,
    (select coalesce(max(category_idx), unknown_id()) - unknown_id() from categories) as n_categories,
    getvariable('n_sessions') as n_sessions,  -- (counted by counts_clean: events.parquet does not mark them)
    -- the log's bounds from each user's first and last event (as windows.sql's bounds), not every event
    (select min(first_event_at) from users)::varchar as first_event_at,
    (select max(last_event_at) from users)::varchar as last_event_at;

-- name: rejects_by_reason
select reason, count(*) as n from rejects group by reason order by n desc, reason;

-- name: rejects_by_file
-- each file's reject reasons with their lines and up to 5 commonest failing values (as reject_examples
-- below): the hints are worked out per file, with its own mapping
with counted as (
    select file_path, reason, value, count(*) as n from rejects group by all
),

ranked as (  -- (the lines without a value, counted with the rest, rank last)
    select *, row_number() over (partition by file_path, reason order by value is null, n desc, md5(value), value) as rank
    from counted
)

select
    file_path, reason, sum(n)::bigint as n,
    coalesce(list(value order by rank) filter (where rank <= 5 and value is not null), []) as examples
from ranked
group by file_path, reason
order by n desc, file_path, reason;

-- name: rows_read_by_file
-- the records read from each file (with the lines the reader could not split), taken after the load
select
    f.file_path,
    (select count(*) from staged as s where s.file_no = f.file_no)
        + (select count(*) from raw_rejects as r where r.file_path = f.file_path) as n
from input_files as f
order by f.file_no;

-- name: rejected_records
-- the rejected records of one file (parameter: its path): structural ones by DuckDB's line, typed ones
-- (not the ignored) by their staged index, for data/csv_lines.py
select true as structural, line as n from raw_rejects where file_path = $1
union all
select false, t.rowid - f.first_row + 1
from staged as t
join input_files as f using (file_no)
where f.file_path = $1 and t.reject_reason <> 'ignored';

-- name: reject_examples
-- the commonest failing values of each reason (up to 5; missing ids and unsplittable lines have none);
-- ties (every time that fails is often a value of its own) in the order of their md5, a fixed spread
-- over the file rather than its smallest values
with counted as (
    select reason, value, count(*) as n from rejects where value is not null group by reason, value
),

ranked as (
    select *, row_number() over (partition by reason order by n desc, md5(value), value) as rank from counted
)

select reason, value, n from ranked where rank <= 5 order by reason, rank;

-- name: sample_rejects
-- the first sample_rows records of the file being loaded (the view input_records), typed and
-- validated as the load will: each reason (NULL: valid, 'ignored') with its count and up to 5 of its
-- commonest failing values, so that a mapping that fails every record stops before the whole file is
-- read. The sample is stored with every column: the reader checks the text encoding only of the
-- columns a query reads, and a view over a few of them would pass lines the load rejects.
create or replace temp table input_sample as select * from input_records limit getvariable('sample_rows');
with counted as (
    select reject_reason as reason, value, count(*) as n
    from typed_records('input_sample')
    group by all
)

select
    reason,
    sum(n)::bigint as n,
    coalesce(list(value order by n desc, md5(value)) filter (where value is not null), [])[1:5] as examples
from counted
group by reason
order by n desc, reason;

-- name: sample_null_like
-- the sample's valid records whose user, item, brand or category is a text that exports write for "no
-- value" (getvariable('null_like'): inputs.NULL_LIKE), by field and value (as null_like_values below)
with valid as (
    select * from typed_records('input_sample') where reject_reason is null
),

fields as (
    select 'user_id' as field, user_key as value from valid
    union all select 'product_id', item_key from valid
    union all select 'brand', brand from valid
    union all select 'category', category_key from valid
    union all select 'category', category_code from valid where category_key is null
)

select field, value, count(*) as n from fields
where list_contains(getvariable('null_like'), value)
group by all
order by n desc, field, value;

-- name: sample_unreadable
-- the lines the CSV reader could not split (a wrong field count, invalid text), by reason as the load
-- names them; the reader stores them only when its scan reached the end of the file (a file no longer
-- than the sample): for a longer one they are not known here
with lines as (
    select file_id, line, any_value(error_type) as error_type from load_reject_errors group by file_id, line
)

select reader_reject_reason(error_type) as reason, count(*) as n
from lines
group by 1
order by n desc, reason;

-- name: sample_done
drop table if exists input_sample;

-- name: sample_reader_rejects_done
-- (CSV) the reader's rejects of the sample's lines, cleared: the load stores them again
delete from load_reject_errors;
delete from load_reject_scans;

-- name: ignored_by_value
-- taken after clean, before staged's value is dropped
select value, count(*) as n from staged where reject_reason = 'ignored' group by 1 order by n desc, 1;

-- name: events_by_type
-- (grouped on the id, named after: naming each of millions of events cost twice the count)
select event_type_name(event_type_id) as event_type, n
from (select event_type_id, count(*) as n from events group by event_type_id)
order by event_type;

-- name: windows
select
    w.split,
    w.window_start::varchar as window_start,
    w.window_end::varchar as window_end,
    (select count(*) from users as u where u.first_event_at < w.window_start) as n_users_with_inputs,
    (select count(distinct t.user_idx) from truth as t where t.split = w.split) as n_users_with_purchases,
    (select count(*) from truth as t where t.split = w.split) as n_purchased_pairs
from windows as w
order by w.window_start;

-- name: json_keys_found
-- (JSON lines) which of the JSON paths json_paths some record of the file input_glob has, with a value
-- that is not an object (as the columns of inspect_json): their numbers (from 1); invalid lines are
-- skipped (the load rejects them)
select i
from (
    select
        unnest(json_type(line, getvariable('json_paths'))) as kind,
        unnest(range(1, len(getvariable('json_paths')) + 1)) as i
    from read_csv(
        getvariable('input_glob'), header = false, auto_detect = false, delim = chr(1), quote = '', escape = '',
        encoding = getvariable('input_encoding'), columns = {'line': 'VARCHAR'}, ignore_errors = true
    )
    where json_valid(line)
)
group by i
having bool_or(kind is not null and kind <> 'OBJECT')
order by i;

-- name: null_like_values
-- users, items, brands and categories whose raw value is a text that exports write for "no value"
-- (getvariable('null_like'): inputs.NULL_LIKE), with their events: kept as values, most likely wrongly
select 'user_id' as field, user_id as value, n_events as n from users where list_contains(getvariable('null_like'), user_id)
union all
select 'product_id', product_id, n_events from items where list_contains(getvariable('null_like'), product_id)
union all
select 'brand', brand, n_events from brands where list_contains(getvariable('null_like'), brand)
union all
select 'category', category, n_events from categories where list_contains(getvariable('null_like'), category)
order by n desc, field, value;
