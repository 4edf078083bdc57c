-- setup: the parsing rules, defined once and used by every later SQL file, and the
-- empty landing tables that each input file's load appends to.
-- inputs: none. outputs: staged (grain: one record of one file, typed; reject_reason says why it is
--   left out, NULL when valid), raw_rejects (grain: one line the CSV reader could not split into the
--   file's fields), input_files (file_no -> file_path, header lines, and first_row: the rowid of the
--   file's first record in staged), reject_lines (grain: one rejected record of a file whose lines and
--   records differ: its physical line, found by prepare (data/csv_lines.py) by DuckDB's line of a
--   structural reject, or by the staged index of a typed one; empty for most files), optional_columns
--   (an empty template).
-- staged is appended to in file order (preserve_insertion_order): a record's number in its file is
-- its rowid - first_row + 1, with no row_number() window over the whole file.
-- parameters (read when a macro runs): time_format, input_time_zone, decimal_separator, event_keys, event_ids, input_event_id (the one
-- event of every row of a file without an event-type column, else NULL), min_event_at, max_event_at, null_values
-- (texts that read as no value, else NULL).

-- the id conventions (pad_id, unknown_id, first_id, view_id .. remove_from_cart_id, event_type_id,
-- event_type_name) are macros in ids.sql, defined on every connection that reads or writes these tables

-- left_pad(list, width): pad_id() on the left up to width (the padding of every sequence array;
-- l[1:0] is an empty list of l's own type, so it serves INTEGER[] and BIGINT[] alike)
create or replace macro left_pad(l, width) as list_resize(l[1:0], width - len(l), pad_id()) || l;

-- parse_time(text): the event time as UTC TIMESTAMP, NULL when it does not parse, in the mapping's
-- time_format: iso (ISO 8601, any time zone suffix), unix_s, unix_ms, unix_us, unix_ns, or a strptime format;
-- a time written without a zone is the wall-clock time of the mapping's time_zone (input_time_zone; NULL: UTC)
create or replace macro epoch_to_timestamp(s) as
    case when s between -1e11 and 1e11 then to_timestamp(s)::timestamp end;
-- in_time_zone(ts): a wall-clock time of input_time_zone as the UTC time of the same instant (a time that
-- a change of the clocks skips or repeats is read as ICU reads it: in Europe/Berlin at +01:00 either way)
create or replace macro in_time_zone(ts) as case when getvariable('input_time_zone') is null then ts
    else timezone('UTC', timezone(getvariable('input_time_zone'), ts)) end;
-- has_zone(text): whether an ISO time names its zone after the time of day (Z, +02, +02:00, +0200, +02:00:00, UTC,
-- Europe/Berlin): such a time is that instant, whatever input_time_zone says
create or replace macro has_zone(t) as
    regexp_matches(t, ':[0-9]{2}(:[0-9]{2}([.,][0-9]*)?)?\s*(Z|[+-][0-9]{1,2}(:?[0-9]{2}){0,2}|[A-Za-z][A-Za-z0-9_/+-]*)$');
-- (iso reads a time that ends in ' UTC', as REES46 writes it, with the plain TIMESTAMP cast first: it reads
-- the zone name UTC, and it took 1,020 instructions per value with the suffix test where strptime took
-- 1,177 (benchmarks/typing_instructions.py's method, on the event_time column alone); where it gives
-- NULL, the two REES46 spellings with strptime, several times faster than the general cast; anything
-- else falls through to the cast to TIMESTAMPTZ, which reads every other zone. The plain cast is not
-- tried on other times: it drops an offset such as +02)
create or replace macro utc_time(t) as case when suffix(t, ' UTC') then try_cast(t as timestamp) end;
create or replace macro parse_time(t) as case getvariable('time_format')
    when 'iso' then case when getvariable('input_time_zone') is null then coalesce(
        utc_time(t),
        try_strptime(t, ['%Y-%m-%d %H:%M:%S UTC', '%Y-%m-%d %H:%M:%S']),
        try_cast(trim(t) as timestamptz)::timestamp
    ) else coalesce(
        utc_time(t),
        try_strptime(t, '%Y-%m-%d %H:%M:%S UTC'),
        in_time_zone(try_strptime(t, '%Y-%m-%d %H:%M:%S')),
        case when has_zone(trim(t)) then try_cast(trim(t) as timestamptz)::timestamp
            else in_time_zone(try_cast(trim(t) as timestamp)) end
    ) end
    when 'unix_s' then epoch_to_timestamp(try_cast(trim(t) as double))
    when 'unix_ms' then epoch_to_timestamp(try_cast(trim(t) as double) / 1000)
    when 'unix_us' then epoch_to_timestamp(try_cast(trim(t) as double) / 1000000)
    when 'unix_ns' then epoch_to_timestamp(try_cast(trim(t) as double) / 1000000000)
    -- (a format with %z or %Z reads its zone: strptime gives the instant)
    else case when regexp_matches(getvariable('time_format'), '%[zZ]') then try_strptime(trim(t), getvariable('time_format'))
        else in_time_zone(try_strptime(trim(t), getvariable('time_format'))) end
end;

-- parse_price(t): a price written as text as DOUBLE, NULL when it does not parse, by the mapping's
-- decimal_separator: '.' reads any number DuckDB reads ('12.5', '1e3', '12.', '.5'); ',' reads a decimal
-- comma, the digits before it optionally grouped in threes by '.' ('12,5', '1.234,56', '1.234'; a group
-- never starts the number with 0: '0.500' does not parse), either side of the comma may be empty as with
-- '.' ('12,', ',5'); any other '.' does not parse ('12.5' in such a log is a typo or another column,
-- never silently twelve and a half)
create or replace macro parse_price(t) as case getvariable('decimal_separator')
    when ',' then case when regexp_full_match(t, '[-+]?(([0-9]+|[1-9][0-9]{0,2}(\.[0-9]{3})+)(,[0-9]*)?|,[0-9]+)')
        then try_cast(replace(replace(t, '.', ''), ',', '.') as double) end
    else try_cast(t as double)
end;

-- reader_reject_reason(error_type): the reject reason of a line the CSV reader could not split, from
-- its error type (the load's raw_rejects and prepare --check name them alike; input_format is csv, or
-- json for JSON lines, which the reader reads as one field per line: a second field is broken JSON)
create or replace macro reader_reject_reason(error_type) as case
    when error_type = 'INVALID ENCODING' then 'invalid ' || getvariable('input_encoding')
    when getvariable('input_format') = 'json' and error_type in ('MISSING COLUMNS', 'TOO MANY COLUMNS') then 'malformed json'
    when getvariable('input_format') = 'json' and error_type = 'LINE SIZE OVER MAXIMUM' then 'line too long (over 2 MB)'
    when error_type in ('MISSING COLUMNS', 'TOO MANY COLUMNS') then 'wrong field count'
    else 'malformed ' || getvariable('input_format') || ': ' || lower(error_type)
end;

-- clean_text(t): text without its surrounding spaces, NULL when empty or one of the mapping's null_values
-- (trim only where there is a space to trim: most values have none, and trim costs a copy of every value).
-- prepare defines it for each load (_open_records) as one of the macros below, the one that fits the
-- mapping, so that no value tests a setting: written as one macro with CASEs on getvariable('empty_texts')
-- and getvariable('null_values'), those CASEs did not drop out as constants in the load (a 300K-row
-- prepare under callgrind on one thread, DuckDB's own instructions: 41M more, about 135 per record for
-- the six texts of a CSV record). Defined here as trimmed_text, the CSV form.
-- trimmed_text(t): for CSV, whose reader reads an empty field, quoted or not, as NULL
create or replace macro trimmed_text(t) as case when contains(t, ' ') then nullif(trim(t), '') else t end;
-- trimmed_nonempty_text(t): for JSON lines and Parquet, which hold empty texts
create or replace macro trimmed_nonempty_text(t) as case when contains(t, ' ') then nullif(trim(t), '') else nullif(t, '') end;
-- not_listed_null(t): t, NULL when it is one of the mapping's null_values (input.null_values: NULL, \N, ...),
-- around one of the two above where the mapping lists any
create or replace macro not_listed_null(t) as case when list_contains(getvariable('null_values'), t) then null else t end;
create or replace macro clean_text(t) as trimmed_text(t);
-- attr_text(t): an item's category_id, category_code or brand as the load stores it in item_text: as the
-- file wrote it, cleaned only after 03_clean.sql's distinct over the items (item_attrs), where it is
-- cleaned once per distinct text instead of once per event (three clean_texts a record: 5% of the load's
-- typing and storing). Where the mapping lists null_values it is clean_text(t) (prepare defines it with
-- clean_text for each load: define_clean_text): whether a text is one of them depends on its file's mapping.
create or replace macro attr_text(t) as t;

-- price_of(t): parse_price(clean_text(t)) of a raw price text. With '.' and no null_values that is
-- try_cast(t as double): the cast reads a number with spaces around it as trim would leave it, and
-- blank or empty text as NULL, so the clean_text (and its copy) is left out there (the condition is a
-- constant: one branch runs)
create or replace macro price_of(t) as case
    when getvariable('decimal_separator') = '.' and getvariable('null_values') is null then try_cast(t as double)
    else parse_price(clean_text(t))
end;

-- item_text_of(item, category_id, category_code, brand): the four texts of an event's item, one after another
-- (NULL as empty), as a BLOB of their UTF-8 bytes: a table checks each VARCHAR it stores for UTF-8, which
-- the texts have passed already (storing it at 8M rows: 0.46-0.49 against 0.68-0.71 CPU-s as VARCHAR, five
-- rounds each, encode() itself 0.09 of that); and item_lens_of their first three lengths in bytes, in 42 bits each of a HUGEINT (a
-- BIGINT's 21 bits would overflow on a text of 2 MB); item_len(lens, k) is the k-th (0: the item's). Together
-- they are exact: the fourth is the rest, and an empty part is a NULL (a cleaned text is never empty, and
-- clean_text reads an empty one as NULL). item_texts() takes them apart
create or replace macro item_text_of(item, category_key, category_code, brand) as encode(concat(item, category_key, category_code, brand));
create or replace macro item_lens_of(item, category_key, category_code) as
    (coalesce(strlen(item), 0)::hugeint << 84) | (coalesce(strlen(category_key), 0)::hugeint << 42) | coalesce(strlen(category_code), 0);
create or replace macro item_len(lens, k) as ((lens >> (84 - 42 * k)) & 4398046511103)::bigint;
-- item_texts(t, lens): {item_key, category_key, category_code, brand} of an item_text and its item_lens (the
-- parts are cut from its bytes: each is a whole text, so valid UTF-8)
create or replace macro item_part(t, first, n) as nullif(decode(t[first:first + n - 1]), '');
create or replace macro item_texts(t, lens) as {
    'item_key': item_part(t, 1, item_len(lens, 0)),
    'category_key': item_part(t, item_len(lens, 0) + 1, item_len(lens, 1)),
    'category_code': item_part(t, item_len(lens, 0) + item_len(lens, 1) + 1, item_len(lens, 2)),
    'brand': item_part(t, item_len(lens, 0) + item_len(lens, 1) + item_len(lens, 2) + 1, octet_length(t))
};

-- the id a mapping's event name stands for in event_ids and input_event_id: 0 for 'ignore', else
-- event_type_id (NULL for no name)
create or replace macro mapped_event_id(name) as (case when name = 'ignore' then 0 else event_type_id(name) end)::tinyint;

-- the event type id of a raw event value (any case): event_ids at the value's place in event_keys (the
-- mapping's keys, lower case: the value as written is looked up first; two lists, where a MAP's lookup
-- cost twice as much: 0.40 -> 0.23 CPU-s at 8M rows); 0 for a value the mapping ignores, NULL when
-- unmapped. (The id straight from the list, where the event's name and a CASE over it to its id cost
-- 1.1% more of the load's typing.)
create or replace macro event_id(v) as coalesce(
    getvariable('event_ids')[list_position(getvariable('event_keys'), v)],
    getvariable('event_ids')[list_position(getvariable('event_keys'), lower(trim(v)))]
);

-- why a typed record is left out: 'ignored' (its event value is ignored by the mapping) or a reject
-- reason; NULL when it is a valid event
create or replace macro reject_reason(record_problem, event_id, user_key, item_key, event_at, price_text, price) as case
    when record_problem is not null then record_problem  -- (JSON lines: an empty line, or not a JSON object)
    when event_id = 0 then 'ignored'
    when user_key is null then 'missing user_id'
    when item_key is null then 'missing item id'
    when event_at is null then 'unparseable event_time'
    when event_at < getvariable('min_event_at') or event_at > getvariable('max_event_at')
        then 'event_time out of range'
    when event_id is null then 'unknown event_type'
    when price is null and price_text is not null then 'unparseable price'  -- (price_text: only where price is NULL)
    when isnan(price) or isinf(price) then 'non-finite price'
    when price < 0 then 'negative price'
end;


-- typed_records(src): the view src (one file's records as text under canonical names, in file
-- order) typed and validated in one pass: the rows of staged. Rejected and ignored records keep
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
        -- (a file whose rows are all one event, input.event, has no event-type column: input_event_id is its id)
        coalesce(getvariable('input_event_id'), event_id(event_type)) as event_id,
        clean_text(product_id) as item_key,
        clean_text(user_id) as user_key,
        clean_text(user_session) as session_key,
        clean_text(category_id) as category_key,
        clean_text(category_code) as category_code_norm,
        clean_text(brand) as brand_norm,
        price_of(price) as price_value
    from filled
),

final as (
    select
        getvariable('input_file_no') + coalesce(file_index, 0)::integer as file_no,  -- (file_index: CSV files read in one scan)
        event_at,
        nullif(event_id, 0) as event_type_id,
        item_key,
        user_key,
        -- sessions are only compared for equality (and break ties in the sort): DuckDB's 64-bit hash()
        -- of the text instead of the text, cheaper to store and sort, and about 10x cheaper to take
        -- than md5 (0.6 s of an 8M-row load). It is DuckDB's own function: a DuckDB whose hash()
        -- differs may order tied events of different sessions otherwise, so the manifest records a
        -- probe of it (session_hash_check), which the content hash covers
        case when session_key is not null then hash(session_key) end as session_hash,
        -- the item, category_id, category_code and brand as staged stores them: one text, the four
        -- written one after another, and their lengths (item_texts() below takes them apart). One text
        -- column where four cost a column each to store, and 03_clean.sql's one distinct over it, where the
        -- distinct over four texts took 1.33 CPU-s at 8M rows, 0.6 over these two
        -- (the item's category and brand as the file wrote them, cleaned after 03_clean.sql's distinct: attr_text)
        item_text_of(item_key, attr_text(category_id), attr_text(category_code), attr_text(brand)) as item_text,
        item_lens_of(item_key, attr_text(category_id), attr_text(category_code)) as item_lens,
        -- the key 04_sessionize.sql joins each event's item, category and brand to their codes on: DuckDB's
        -- hash() of the four texts (of item_text and item_lens: with the lengths, items whose texts run
        -- together alike, as 12 and 3 and 1 and 23 do, have hashes of their own), one 8-byte key where four
        -- joins on text cost 0.86 CPU-s at 8M rows (0.17 on it; taking and storing it 0.25). 03_clean.sql's
        -- item_attrs holds the hash of each distinct four beside them, and where two of its rows share a hash,
        -- exact_keys.sql makes the keys row numbers first: a join on them is the join on the text. (The
        -- user's text join costs about what its hash would cost here.)
        hash(item_text, item_lens) as item_hash,
        category_key,
        category_code_norm as category_code,
        brand_norm as brand,
        price_value as price,
        reject_reason,
        -- the record as the file wrote it: its line (JSON lines), else its fields in file order (kept for
        -- rejected and ignored ones; built only for them: CASE evaluates its branch only on the rows that take it)
        case has_raw when true then coalesce(record_text, array_to_string(
            list_transform([*columns(lambda c: list_contains(getvariable('input_names'), c))], lambda v: coalesce(v, '')),
            getvariable('input_delimiter')))
        end as raw,
        -- the text of the field a rejected record failed on (what the summary shows and a hint reads), or
        -- an ignored record's event value (lower case: what ignored_by_value counts); one column for both,
        -- where two NULL columns cost 0.07 CPU-s more to store at 8M rows
        -- (the outer CASE: a valid event, most of them, meets one test instead of the seven)
        case when reject_reason is not null then case reject_reason
            when 'ignored' then lower(trim(event_type))
            when 'unparseable event_time' then trim(event_time)
            when 'event_time out of range' then trim(event_time)
            when 'unknown event_type' then nullif(trim(event_type), '')
            when 'unparseable price' then clean_text(price)
            when 'non-finite price' then clean_text(price)
            when 'negative price' then clean_text(price)
        end end as value
    from (
        select
            *,
            reject_reason(record_problem, event_id, user_key, item_key, event_at, clean_text(price), price_value) as reject_reason,
            reject_reason is not null as has_raw  -- (*COLUMNS() below cannot sit beside an operator)
        from typed
    )
)

select * from final;

-- staged_records(src): typed_records as staged stores them: the item and its category and brand as
-- item_text and item_lens only
create or replace macro staged_records(src) as table
select * exclude (item_key, category_key, category_code, brand) from typed_records(src);

create or replace table staged (
    file_no integer,
    event_at timestamp,
    event_type_id tinyint,
    user_key varchar,
    item_text blob,
    item_lens hugeint,
    session_hash ubigint,
    item_hash ubigint,
    price double,
    reject_reason varchar,
    raw varchar,
    value varchar
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
    header_lines integer,
    first_row bigint
);

create or replace table reject_lines (
    file_path varchar,
    structural boolean,  -- true: n is DuckDB's line of a line it could not split; false: n is a staged index
    n bigint,
    line bigint
);

-- the canonical text columns a file may lack: a load unions it by name so that they read as NULL
create or replace table optional_columns (
    event_type varchar,  -- (absent only where input_event_id is set: input.event)
    category_id varchar,
    category_code varchar,
    brand varchar,
    price varchar,
    user_session varchar,
    record_problem varchar,  -- (JSON lines: why a line is no record, else NULL)
    record_text varchar,  -- (JSON lines: the line)
    file_index ubigint  -- (CSV: the record's file among those read in one scan, from 0; the readers' type: a BIGINT
    -- here made the union a HUGEINT, cast back row by row)
);
