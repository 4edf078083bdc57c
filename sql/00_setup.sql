-- setup: empty landing tables for the raw rows of every input file.
-- inputs: none. outputs: raw_input (grain: one parsed line of one file), raw_rejects (grain: one
-- line the CSV reader could not split into the header's fields).
-- parameters: none.

-- left_pad(list, width): zeros on the left up to width (the padding of every sequence array;
-- l[1:0] is an empty list of l's own type, so it serves INTEGER[] and BIGINT[] alike)
create or replace macro left_pad(l, width) as list_resize(l[1:0], width - len(l), 0) || l;
create or replace table raw_input (
    file_path varchar,
    record_no bigint,
    event_time varchar,
    event_type varchar,
    product_id varchar,
    category_id varchar,
    category_code varchar,
    brand varchar,
    price varchar,
    user_id varchar,
    user_session varchar
);

create or replace table raw_rejects (
    file_path varchar,
    line bigint,
    reason varchar,
    raw varchar
);
