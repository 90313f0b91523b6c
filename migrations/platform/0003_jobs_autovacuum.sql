-- The jobs table is a queue: every row is inserted, updated once or twice and deleted within
-- seconds. Default autovacuum waits for 20% of the table to be dead, which on a small, busy
-- table means the fetch index fills with dead entries that every fetch must step over (seen in
-- `hearth bench jobs churn`: 669 -> 2,151 buffers per fetch after 300k jobs). Vacuum it after
-- every thousand dead rows, without the cost-based pauses, and leave room in each page so
-- state updates can stay on the page (HOT) instead of adding index entries.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 70
);
