-- windows: named queries that purchasepred/data/windows.py reads to choose --eval-days (or to check a
-- given one) before 07_split.sql runs, over the kept events (04_sessionize.sql's view: the rows of
-- events.parquet, read from memory, where the file's scans cost 0.1 s more at 8M rows) and their users
-- (05_vocab.sql's table: a user's first_event_at is the first of its events, read there instead of
-- grouping every event).
-- Times are epoch microseconds, as 07_split.sql computes its windows on event_at at microsecond
-- precision.

-- name: bounds
select epoch_us(min(first_event_at)) as first_us, epoch_us(max(last_event_at)) as last_us from users;

-- name: user_first
-- each user's first event
select epoch_us(first_event_at) as first_us from users;

-- name: user_second
-- each user's second event (the first training pair ends there), for the users with two or more
select epoch_us(event_at) as second_us from kept_events where seq = 2;

-- name: purchases
-- every purchase, with the time of its buyer's first event
select p.user_idx, epoch_us(p.event_at) as at_us, epoch_us(u.first_event_at) as first_us
from kept_events as p
join users as u on u.user_idx = p.user_idx
where p.event_type_id = purchase_id()
order by at_us, p.user_idx;

-- name: eval_us
-- the window length in microseconds exactly as 07_split.sql computes it from eval_seconds
select (?::double * 1e6)::bigint as eval_us;
