-- One job per transaction, as the sustained producers insert it (Enqueue::enqueue's INSERT).
INSERT INTO jobs (kind, queue, args, priority, run_at, max_attempts, tags)
VALUES ('bench_record', 'floor', '{"t_enq": 0}', 0, now(), 20, '{}');
