-- The nudge's pick of waiting calls without a campaign reads parked calls only: due, with
-- no message on its way (neither `nudged_at` nor `outbox_due_at`; the reclaimer's refill
-- clears a mark whose message is overdue). With V10's index, which held every waiting call,
-- the calls whose message was on its way came first (a nudge takes the oldest due, so the
-- calls it nudged are the oldest), and every settle read past all of them and their older
-- row versions before finding a parked one: 130 of the 166 buffers of a settle's
-- release-and-nudge statement in `ebra bench --only e2e` (auto_explain), 18 such calls
-- passed over.
CREATE INDEX calls_parked_without_campaign ON calls (next_run_at)
    WHERE status = 'PENDING' AND campaign_id IS NULL AND nudged_at IS NULL AND outbox_due_at IS NULL;
DROP INDEX calls_pending_due_without_campaign;
