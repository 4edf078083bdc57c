-- setup: the parsing rules, defined once and used by every later SQL file, and the
-- empty landing tables that each input file's load appends to.
-- inputs: none. outputs: staged (grain: one record of one file, typed; reject_reason says why it is
--   left out, NULL when valid), raw_rejects (grain: one line the CSV reader could not split into the
--   file's fields), input_files (file_no -> file_path), optional_columns (an empty template).
-- parameters (read when a macro runs): time_format, event_map, min_event_at, max_event_at.

-- the id conventions (pad_id, unknown_id, first_id, view_id .. remove_from_cart_id, event_type_id,
-- event_type_name) are macros in ids.sql, defined on every connection that reads or writes these tables

-- left_pad(list, width): pad_id() on the left up to width (the padding of every sequence array;
-- l[1:0] is an empty list of l's own type, so it serves INTEGER[] and BIGINT[] alike)
create or replace macro left_pad(l, width) as list_resize(l[1:0], width - len(l), pad_id()) || l;

-- parse_time(text): the event time as UTC TIMESTAMP, NULL when it does not parse, in the mapping's
-- time_format: iso (ISO 8601, any time zone suffix), unix_s, unix_ms, or a strptime format
create or replace macro epoch_to_timestamp(s) as
    case when s between -1e11 and 1e11 then to_timestamp(s)::timestamp end;
create or replace macro parse_time(t) as case getvariable('time_format')
    when 'iso' then try_cast(trim(t) as timestamptz)::timestamp
    when 'unix_s' then epoch_to_timestamp(try_cast(trim(t) as double))
    when 'unix_ms' then epoch_to_timestamp(try_cast(trim(t) as double) / 1000)
    else try_strptime(trim(t), getvariable('time_format'))
end;

-- the canonical event name of a raw event value (any case), 'ignore', or NULL when unmapped
create or replace macro event_name(v) as getvariable('event_map')[lower(trim(v))];

-- why a typed record is left out: 'ignored' (its event value is ignored by the mapping) or a reject
-- reason; NULL when it is a valid event
create or replace macro reject_reason(event_name, user_key, item_key, event_at, price_text, price) as case
    when event_name = 'ignore' then 'ignored'
    when user_key is null then 'missing user_id'
    when item_key is null then 'missing item id'
    when event_at is null then 'unparseable event_time'
    when event_at < getvariable('min_event_at') or event_at > getvariable('max_event_at')
        then 'event_time out of range'
    when event_name is null then 'unknown event_type'
    when price_text is not null and price is null then 'unparseable price'
    when isnan(price) or isinf(price) then 'non-finite price'
    when price < 0 then 'negative price'
end;


-- typed_records(src): the view src (one file's records as text under canonical names, plus
-- record_no) typed and validated in one pass: the rows of staged. Rejected and ignored records keep
-- their text, fields in file order joined by the file's delimiter.
create or replace macro typed_records(src) as table
with filled as (
    select * from query_table(src)
    union all by name
    select * from optional_columns
),

typed as (
    select
        *,
        parse_time(event_time) as event_at,
        event_name(event_type) as event_name,
        nullif(trim(product_id), '') as item_key,
        nullif(trim(user_id), '') as user_key,
        nullif(trim(user_session), '') as session_key,
        nullif(trim(category_id), '') as category_key,
        nullif(trim(category_code), '') as category_code_norm,
        nullif(trim(brand), '') as brand_norm,
        nullif(trim(price), '') as price_text,
        try_cast(nullif(trim(price), '') as double) as price_value,
        [*columns(lambda c: list_contains(getvariable('input_names'), c))] as raw_fields
    from filled
),

final as (
    select
        getvariable('input_file_no') as file_no,
        record_no,
        event_at,
        event_type_id(event_name)::tinyint as event_type_id,
        item_key,
        user_key,
        session_key,
        category_key,
        category_code_norm as category_code,
        brand_norm as brand,
        price_value as price,
        reject_reason,
        -- the record as the file wrote it, its fields in file order (kept for rejected and ignored ones)
        case when reject_reason is not null then array_to_string(
            list_transform(raw_fields, lambda v: coalesce(v, '')), getvariable('input_delimiter'))
        end as raw,
        case when reject_reason = 'ignored' then lower(trim(event_type)) end as ignored_value
    from (
        select *, reject_reason(event_name, user_key, item_key, event_at, price_text, price_value) as reject_reason
        from typed
    )
)

select * from final;

create or replace table staged (
    file_no integer,
    record_no bigint,
    event_at timestamp,
    event_type_id tinyint,
    item_key varchar,
    user_key varchar,
    session_key varchar,
    category_key varchar,
    category_code varchar,
    brand varchar,
    price double,
    reject_reason varchar,
    raw varchar,
    ignored_value varchar
);

create or replace table raw_rejects (
    file_path varchar,
    line bigint,
    reason varchar,
    raw varchar
);

create or replace table input_files (
    file_no integer,
    file_path varchar,
    header_lines integer
);

-- the canonical text columns a file may lack: a load unions it by name so that they read as NULL
create or replace table optional_columns (
    category_id varchar,
    category_code varchar,
    brand varchar,
    price varchar,
    user_session varchar
);
