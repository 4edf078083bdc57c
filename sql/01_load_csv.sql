-- load_csv: read raw CSV files (.csv, or compressed: .csv.gz, .csv.zst) with explicit VARCHAR columns
-- (no type sniffing), and type and validate every record in the same pass. One load reads one file, or
-- several consecutive ones of the same mapping and header in one scan (a log of many daily files: one
-- statement instead of one per file); the reader keeps their order, and file_index tells each record's file.
-- inputs: the files getvariable('input_glob') (a list); input_columns, a struct naming the files' columns in
--   file order: mapped ones by their canonical name (event_time, event_type, product_id, category_id,
--   category_code, brand, price, user_id, user_session), the others extra_column_N.
-- outputs: rows appended to staged (typed; rejected and ignored records keep their raw text; file_no
--   input_file_no + file_index); lines with the wrong field count or invalid text (in the files'
--   encoding) appended to raw_rejects with their file and line number.
-- parameters: input_parallel, input_file_no (of the first file), input_paths (the files as given, recorded in rejects),
--   input_glob (the same paths with glob characters escaped, for the reader), input_columns, input_names
--   (the struct's names), input_header, input_delimiter, input_encoding (utf-8, latin-1 or utf-16), and
--   those of the parsing macros of 00_setup.sql.
-- Two parts: "records" (the view of the files) and "load"; prepare checks the first rows between them
-- (stats.sql: sample_rejects).
-- name: records
create or replace temp view input_records as
select *, file_index  -- in file order: the reader and the insert preserve it (rowid numbers the records)
from read_csv(
    getvariable('input_glob'),
    header = getvariable('input_header'),
    auto_detect = false,
    delim = getvariable('input_delimiter'),
    encoding = getvariable('input_encoding'),
    quote = '"',
    escape = '"',
    columns = getvariable('input_columns'),
    store_rejects = true,
    rejects_table = 'load_reject_errors',
    rejects_scan = 'load_reject_scans',
    -- 16 MB buffers instead of the reader's smaller default: the load's insert keeps the file's order
    -- (preserve_insertion_order), and it, like the bare read, runs faster on larger buffers. Measured on
    -- the 8M-row synth log: an ordered insert of its raw text 3.2 s with the default buffer, 3.9 s at
    -- 4 MB, 2.5 s at 16, 32 and 64 MB (as fast as an insert in no order); the whole load 4.0 -> 3.5 s at
    -- 16 MB, at the same peak RSS (128 and 256 MB: 300-400 MB more, and slower). The buffer is also the
    -- longest line the reader takes (a longer one is a reject: 'malformed csv: line size over maximum');
    -- DuckDB's default is 2,000,000 bytes, and setting max_line_size to it made the same insert 3.8 s
    buffer_size = 16777216,
    -- (true: all threads; false for a file whose parallel read left records out: prepare.reread_short_groups)
    parallel = getvariable('input_parallel')
);

-- name: load
insert into staged by name
select * from staged_records('input_records');


insert into raw_rejects
select
    getvariable('input_paths')[file_id::bigint + 1] as file_path,  -- (the reader's file_id is the file's index)
    line,
    reader_reject_reason(any_value(error_type)) as reason,
    trim(any_value(csv_line), chr(13) || chr(10)) as raw  -- the reader keeps a stray newline with CRLF files
from load_reject_errors
group by file_id, line
order by file_id, line;

delete from load_reject_errors;
delete from load_reject_scans;
