-- load_parquet: read one raw Parquet file and type and validate every record in the same pass, by
-- the same rules as CSV (each mapped column is read as text first).
-- inputs: the view parquet_columns, made by the runner from the file (or consecutive files of one
--   mapping and columns, read in one scan, with the reader's file_index): every column cast to VARCHAR,
--   mapped ones under their canonical name, the others extra_column_N (names bound, never formatted).
-- outputs: rows appended to staged.
-- parameters: input_file_no, input_names, input_delimiter (joins a rejected record's fields) and
--   those of the parsing macros of 00_setup.sql.
-- name: records
create or replace temp view input_records as
select * from parquet_columns;  -- in file order: rowid numbers the records

-- name: load
insert into staged by name
select * from staged_records('input_records');
