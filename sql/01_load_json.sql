-- load_json: read one file of JSON lines (.jsonl, .ndjson, .json, each also .gz or .zst: one event object per
-- line), or several of one mapping in one scan (as 01_load_csv.sql), and type and validate every record in the same pass, by the same rules as CSV.
-- inputs: the files getvariable('input_glob') (a list); json_paths, the JSON path of each mapped column in the
--   order of input_names (their canonical names); the runner names the fields (view input_records).
-- outputs: rows appended to staged (every line is a record: an empty line, or one that is not a JSON
--   object, is rejected with its text; a record's raw text is its line); lines the reader could not read
--   (invalid UTF-8, longer than its line limit) appended to raw_rejects with their line number.
-- parameters: input_file_no (of the first file), input_paths, input_glob, json_paths, input_names, input_encoding (utf-8 or latin-1),
--   input_format ('json', for the reader's reject reasons), and those of the parsing macros of 00_setup.sql.
-- One part, "records" (the views of the file); the runner adds the view input_records (json_fields'
-- fields under their canonical names) and then runs the part "load" of 01_load_csv.sql, which is the
-- same for both.
-- name: records
-- every line as one text field: JSON never holds a control character such as U+0001 unescaped, so it
-- splits no valid line (a line that has one is a reader's reject: malformed json); quotes are the JSON's
-- own. (Like a CSV's, the line ends must be one kind throughout: \n or \r\n.)
create or replace temp view json_lines as
select
    file_index,  -- (the line's file among those of one mapping read in one scan, from 0)
    line,
    -- each mapped field's text (a number, true/false or a nested value as its JSON text; null as NULL),
    -- in one parse of the line; NULL when the line is no JSON object (try: a parse error is NULL, so
    -- that the line is parsed once, not checked with json_valid first)
    case when starts_with(line, '{') or regexp_matches(line, '^\s+\{')
        then try(json_extract_string(line, getvariable('json_paths'))) end as fields
from read_csv(
    getvariable('input_glob'),
    header = false,
    auto_detect = false,
    delim = chr(1),
    quote = '',
    escape = '',
    encoding = getvariable('input_encoding'),
    columns = {'line': 'VARCHAR'},
    store_rejects = true,
    rejects_table = 'load_reject_errors',
    rejects_scan = 'load_reject_scans'
);

create or replace temp view json_fields as
select
    -- what is wrong with the line as a record, NULL when it is a JSON object (no trim: it copies the line)
    case
        when fields is not null then null
        when line is null or regexp_full_match(line, '\s*') then 'empty line'
        else 'malformed json'
    end as record_problem,
    coalesce(line, '') as record_text,  -- (the reader leaves the line end out, \n or \r\n)
    fields,
    file_index
from json_lines;
