-- Fewer index entries per row version of the hottest tables. None of these updates can be
-- HOT (each changes an indexed column or a partial index's predicate), so every version of a
-- call (created, nudged, claimed, settled: about four) and of a dial (three) is entered in
-- every index whose predicate it meets. These four held entries that no query needed:
--
-- * The idempotency key's uniqueness held every call, with or without a key (NULLs are
--   entered too). Only keyed calls are looked up or conflict (`ON CONFLICT (idempotency_key)
--   WHERE idempotency_key IS NOT NULL`; a lookup `idempotency_key = $1` or `= ANY($1)` implies
--   the predicate).
-- * `calls_pending_created` (the max pending age's expiry) repeats `calls_status_newest`:
--   `status = 'PENDING' AND created_at <= $bound` is a range of that index's first two
--   columns, one arm of the expiry pass's bitmap OR as before.
-- * `calls_campaign_pending_due` held the calls of no campaign as well, under a NULL key no
--   query asks for (the nudge reads those through `calls_parked_without_campaign`, the
--   refill through `calls_pending_due`); every reader names its campaign.
-- * `call_attempts_call_started` (the daily cap's dials of a number) repeats the unique
--   `(call_id, attempt_no)`: a call has at most its `max_attempts` dials to filter by
--   `started_at`.
--
-- Measured under `ebra bench --only e2e` (README ¹⁸).
--
-- Deploy before migrating: the functions before this migration name the full unique
-- constraint in every create's `ON CONFLICT (idempotency_key)`, which fails without it;
-- today's `ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL` takes either.
CREATE UNIQUE INDEX calls_idempotency_key ON calls (idempotency_key) WHERE idempotency_key IS NOT NULL;
ALTER TABLE calls DROP CONSTRAINT calls_idempotency_key_key;

DROP INDEX calls_pending_created;

CREATE INDEX calls_campaign_pending_due_keyed ON calls (campaign_id, next_run_at)
    WHERE status = 'PENDING' AND campaign_id IS NOT NULL;
DROP INDEX calls_campaign_pending_due;
ALTER INDEX calls_campaign_pending_due_keyed RENAME TO calls_campaign_pending_due;

DROP INDEX call_attempts_call_started;
