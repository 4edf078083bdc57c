-- load_parquet: read one raw Parquet file; every column is cast to VARCHAR so that validation is
-- the same code path as for CSV.
-- inputs: the file getvariable('input_path'); item column product_id or item_id (any case).
-- outputs: rows appended to raw_input.
-- parameters: input_path (recorded), input_glob (escaped for the reader).
insert into raw_input by name
with parsed as (
    select
        columns('(?i)^event_time$')::varchar as event_time,
        columns('(?i)^event_type$')::varchar as event_type,
        columns('(?i)^(product_id|item_id)$')::varchar as product_id,
        columns('(?i)^user_id$')::varchar as user_id,
        columns('(?i)^(category_id|category_code|brand|price|user_session)$')::varchar
    from read_parquet(getvariable('input_glob'))
),

template as (
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
        row_number() over () as record_no,
        event_time,
        event_type,
        product_id,
        category_id,
        category_code,
        brand,
        price,
        user_id,
        user_session
    from (select * from template union all by name select * from parsed)
)

select * from final;
