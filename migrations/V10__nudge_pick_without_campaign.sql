-- The nudge's pick of waiting calls without a campaign (a group of their own in the fair
-- pick, `FAIR_NUDGE` in shared/src/store/slots.rs), oldest due first, walked and stopped at
-- the LIMIT. `calls_campaign_pending_due` (campaign_id, next_run_at) cannot give them in
-- `next_run_at` order: `campaign_id IS NULL` is not an equality, so Postgres read every due
-- waiting call without a campaign and sorted them, on every settle (157 rows for one nudge
-- in `ebra bench --only e2e --quick`, seen with auto_explain; the whole backlog with one).
-- Only waiting calls without a campaign get an entry here.
CREATE INDEX calls_pending_due_without_campaign ON calls (next_run_at)
    WHERE status = 'PENDING' AND campaign_id IS NULL;
