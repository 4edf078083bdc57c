-- windows: named queries over the encoded events that purchasepred/data/windows.py reads to choose
-- --eval-days (or to check a given one) before 07_split.sql runs. Times are epoch microseconds, as
-- 07_split.sql computes its windows on event_at at microsecond precision.

-- name: bounds
select epoch_us(min(event_at)) as first_us, epoch_us(max(event_at)) as last_us from events;

-- name: users
-- per user: the first event, and the second (the first training pair ends there), null if none
select
    epoch_us(min(event_at)) as first_us,
    epoch_us(min(event_at) filter (where seq = 2)) as second_us
from events
group by user_idx;

-- name: purchases
-- every purchase, with the time of its buyer's first event
with firsts as (
    select user_idx, min(event_at) as first_at from events group by user_idx
)

select p.user_idx, epoch_us(p.event_at) as at_us, epoch_us(f.first_at) as first_us
from events as p
join firsts as f on f.user_idx = p.user_idx
where p.event_type_id = purchase_id()
order by at_us, p.user_idx;

-- name: eval_us
-- the window length in microseconds exactly as 07_split.sql computes it from eval_seconds
select (?::double * 1e6)::bigint as eval_us;
