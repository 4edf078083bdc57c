-- load_csv: read one raw CSV (.csv or .csv.gz) with explicit VARCHAR columns, no type sniffing.
-- inputs: the file getvariable('input_path'); its header, lower-cased and mapped to canonical names
--   by the runner, as the struct getvariable('input_columns') (item_id is renamed product_id).
-- outputs: rows appended to raw_input; lines with the wrong field count or invalid UTF-8 appended
--   to raw_rejects with their line number (one reject per line, whatever the number of errors).
-- parameters: input_path (recorded in rejects), input_glob (the same path with glob characters
--   escaped, for the reader), input_columns.
insert into raw_input by name
with parsed as (
    select *
    from read_csv(
        getvariable('input_glob'),
        header = true,
        auto_detect = false,
        delim = ',',
        quote = '"',
        escape = '"',
        columns = getvariable('input_columns'),
        store_rejects = true,
        rejects_table = 'load_reject_errors',
        rejects_scan = 'load_reject_scans'
    )
),

numbered as (
    select *, row_number() over () as record_no
    from parsed
),

template as (
    -- optional columns: present as NULL when the file lacks them (competition export: no category_id)
    select
        null::varchar as category_id,
        null::varchar as category_code,
        null::varchar as brand,
        null::varchar as price,
        null::varchar as user_session
    where false
),

final as (
    select
        getvariable('input_path') as file_path,
        record_no,
        event_time,
        event_type,
        product_id,
        category_id,
        category_code,
        brand,
        price,
        user_id,
        user_session
    from (select * from template union all by name select * from numbered)
)

select * from final;

insert into raw_rejects
select
    getvariable('input_path') as file_path,
    line,
    case
        when any_value(error_type) in ('MISSING COLUMNS', 'TOO MANY COLUMNS') then 'wrong field count'
        when any_value(error_type) = 'INVALID ENCODING' then 'invalid utf-8'
        else 'malformed csv: ' || lower(any_value(error_type))
    end as reason,
    trim(any_value(csv_line), chr(13) || chr(10)) as raw  -- the reader keeps a stray newline with CRLF files
from load_reject_errors
group by line
order by line;

delete from load_reject_errors;
delete from load_reject_scans;
