-- Invariant 2's check (no dial to a phone that has a call in progress) reads the phones of
-- the held slots here instead of `calls_one_in_progress_per_phone`. Postgres caches a
-- generic plan on a connection's first executions, often while `calls` is still empty;
-- the partial index's probe and a scan of all of it then cost the same, and without table
-- statistics (a new database; autovacuum off) the plan kept the scan: every claim and every
-- candidate of a nudge read all calls in progress (1,158 buffers for one nudge at cap 200,
-- auto_explain over `ebra bench --only e2e`). `call_slots` always holds its 10,000 rows, so
-- a scan of this index is never as cheap as its probe. The partial unique index on calls
-- stays: it still refuses a second call in progress to one phone. Functions from before
-- this migration do not write the phone: the CHECK refuses their claims, and their releases
-- of slots that hold a phone (they are retried), rather than let a free slot keep a phone,
-- so deploy right after migrating.
ALTER TABLE call_slots ADD COLUMN phone text;
UPDATE call_slots s SET phone = c.phone FROM calls c WHERE c.id = s.call_id;
ALTER TABLE call_slots ADD CONSTRAINT call_slots_phone_with_call CHECK ((call_id IS NULL) = (phone IS NULL));
CREATE UNIQUE INDEX call_slots_phone ON call_slots (phone);
