-- The operator console (issue 16): three reads that must stay fast on any table size.

-- GET /calls?to=<E.164>: one number's calls, newest first, by keyset (the status filter, when
-- given too, is checked on the few rows one number has).
CREATE INDEX calls_phone_newest ON calls (phone, created_at DESC, id DESC);

-- GET /metrics/history: the dials that ended inside the window or have not ended. One btree
-- answers both (`ended_at > $since` and `ended_at IS NULL`), so the chart reads the last
-- hour's dials, not the table.
CREATE INDEX call_attempts_ended ON call_attempts (ended_at);

-- GET /calls/{id}/webhooks: every report received for a dial, applied or not (the existing
-- provider_webhooks_unapplied index holds only the reports still waiting for their dial).
CREATE INDEX provider_webhooks_provider_call ON provider_webhooks (provider_call_id, received_at);
