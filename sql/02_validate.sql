-- validate: collect every rejected line, with its file, line number and reason.
-- inputs: staged (reject_reason set by the load: NULL for a valid event, 'ignored' for a record whose
--   event value the mapping ignores), raw_rejects, input_files, reject_lines (the physical lines of the
--   rejects of a file with empty lines or quoted line breaks, where the numbers below would count records).
-- outputs: rejects (grain: one rejected line; file_path, line, reason, raw text, and value: the text of
--   the field it failed on, NULL for a missing id and for lines the reader could not split). Every
--   record read is in exactly one of rejects, the ignored records of staged, or its valid events.
-- parameters: none.
create or replace table rejects as
with structural as (
    select r.file_path, coalesce(x.line, r.line) as line, r.reason, r.raw, null::varchar as value
    from raw_rejects as r
    left join reject_lines as x on x.file_path = r.file_path and x.structural and x.n = r.line
),

structural_lines as (
    select file_path, line, row_number() over (partition by file_path order by line) as nth
    from raw_rejects
),

semantic as (
    -- the line of a parsed record: its number in the file (rowid - first_row + 1) + the header + the
    -- structural rejects before it (or its physical line, where prepare found it)
    select
        f.file_path,
        coalesce(x.line, t.rowid - f.first_row + 1 + f.header_lines + (
            select count(*) from structural_lines as s
            where s.file_path = f.file_path and s.line - s.nth - f.header_lines < t.rowid - f.first_row + 1
        )) as line,
        t.reject_reason as reason,
        t.raw,
        t.value
    from staged as t
    join input_files as f using (file_no)
    left join reject_lines as x on x.file_path = f.file_path and not x.structural and x.n = t.rowid - f.first_row + 1
    where t.reject_reason <> 'ignored'
),

final as (
    select * from structural
    union all
    select * from semantic
)

select * from final order by file_path, line;
