-- 5,000 jobs in one statement, as `enqueue_many` inserts a chunk of W4's bulk enqueue, without
-- its unnest of parameter arrays and its NOTIFY: the least such an insert costs.
INSERT INTO jobs (kind, queue, args, priority, run_at, max_attempts, tags)
SELECT 'bench_record', 'floor', '{"t_enq": 0}', 0, now(), 20, '{}' FROM generate_series(1, 5000);
