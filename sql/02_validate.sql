-- validate: type every raw row and give each invalid one a reason.
-- inputs: raw_input, raw_rejects.
-- outputs: rejects (grain: one rejected line; file_path, line where known, reason, raw text) and
--   loaded (grain: one valid raw row; typed columns). Every raw row lands in exactly one of them.
-- parameters: max_event_at (latest acceptable event time: now plus a day), min_event_at.
create or replace table typed as
with src as (
    select * from raw_input
),

parsed as (
    select
        file_path,
        record_no,
        event_time,
        event_type,
        product_id,
        category_id,
        category_code,
        brand,
        price,
        user_id,
        user_session,
        try_cast(trim(event_time) as timestamptz)::timestamp as event_at,
        lower(trim(event_type)) as event_type_norm,
        nullif(trim(product_id), '') as item_key,
        nullif(trim(user_id), '') as user_key,
        nullif(trim(user_session), '') as session_key,
        nullif(trim(category_id), '') as category_key,
        nullif(trim(category_code), '') as category_code_norm,
        nullif(trim(brand), '') as brand_norm,
        nullif(trim(price), '') as price_text,
        try_cast(nullif(trim(price), '') as double) as price_value
    from src
),

final as (
    select
        *,
        case
            when user_key is null then 'missing user_id'
            when item_key is null then 'missing item id'
            when event_at is null then 'unparseable event_time'
            when event_at < getvariable('min_event_at') or event_at > getvariable('max_event_at')
                then 'event_time out of range'
            when event_type_norm is null or event_type_norm not in ('view', 'cart', 'purchase', 'remove_from_cart')
                then 'unknown event_type'
            when price_text is not null and price_value is null then 'unparseable price'
            when isnan(price_value) or isinf(price_value) then 'non-finite price'
            when price_value < 0 then 'negative price'
        end as reject_reason
    from parsed
)

select * from final;

create or replace table rejects as
with structural as (
    select file_path, line, reason, raw from raw_rejects
),

structural_lines as (
    select file_path, line, row_number() over (partition by file_path order by line) as nth
    from raw_rejects
),

semantic as (
    -- the line of a parsed record: record_no + header + the structural rejects before it
    select
        t.file_path,
        t.record_no + 1 + (
            select count(*) from structural_lines s
            where s.file_path = t.file_path and s.line - s.nth - 1 < t.record_no
        ) as line,
        t.reject_reason as reason,
        concat_ws(
            ',', coalesce(t.event_time, ''), coalesce(t.event_type, ''), coalesce(t.product_id, ''),
            coalesce(t.category_id, ''), coalesce(t.category_code, ''), coalesce(t.brand, ''),
            coalesce(t.price, ''), coalesce(t.user_id, ''), coalesce(t.user_session, '')
        ) as raw
    from typed as t
    where t.reject_reason is not null
),

final as (
    select * from structural
    union all
    select * from semantic
)

select * from final order by file_path, line;

create or replace table loaded as
select
    event_at,
    event_type_norm as event_type,
    item_key,
    user_key,
    session_key,
    category_key,
    category_code_norm as category_code,
    brand_norm as brand,
    price_value as price
from typed
where reject_reason is null;

drop table typed;
