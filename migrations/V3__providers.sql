-- Real providers (Retell, Vapi, Twilio, ElevenLabs) behind the provider port.
--
-- Outcomes: VOICEMAIL and CANCELED join COMPLETED, FAILED, BUSY and NO_ANSWER. A dial (or a
-- report) that the provider refused for its account concurrency limit is LIMITED: it never
-- counts toward max_attempts (the budget is attempts - limited_dials), so a cap set above
-- what the account allows never fails calls, it only makes them wait.

ALTER TABLE calls DROP CONSTRAINT calls_outcome_check;
ALTER TABLE calls ADD CONSTRAINT calls_outcome_check
    CHECK (outcome IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'CANCELED'));

-- Dials the provider refused for its concurrency limit: made, but not counted.
ALTER TABLE calls ADD COLUMN limited_dials integer NOT NULL DEFAULT 0;
ALTER TABLE calls ADD CONSTRAINT calls_limited_dials_check
    CHECK (limited_dials >= 0 AND limited_dials <= attempts);
ALTER TABLE calls DROP CONSTRAINT calls_check3;
ALTER TABLE calls ADD CONSTRAINT calls_attempt_budget_check
    CHECK (attempts - limited_dials <= max_attempts);

ALTER TABLE call_attempts DROP CONSTRAINT call_attempts_dial_state_check;
ALTER TABLE call_attempts ADD CONSTRAINT call_attempts_dial_state_check
    CHECK (dial_state IN ('DIALING', 'ACCEPTED', 'UNKNOWN', 'REJECTED', 'LIMITED'));
ALTER TABLE call_attempts DROP CONSTRAINT call_attempts_outcome_check;
ALTER TABLE call_attempts ADD CONSTRAINT call_attempts_outcome_check
    CHECK (outcome IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'CANCELED', 'LIMITED'));
-- The provider's own words for how the call ended (Retell's disconnection_reason, Vapi's
-- endedReason, Twilio's CallStatus/AnsweredBy, ElevenLabs' failure_reason/call_result).
ALTER TABLE call_attempts ADD COLUMN end_reason text
    CHECK (char_length(end_reason) <= 255);
-- Reports carry the attempt key back (Retell metadata, Vapi assistantOverrides.metadata,
-- ElevenLabs dynamic variables, Twilio's StatusCallback query): they are matched by it when
-- the dial's answer, with the provider's call id, was lost.
CREATE INDEX call_attempts_idempotency_key ON call_attempts (idempotency_key);
-- The metric of dials refused for the provider's concurrency limit.
CREATE INDEX call_attempts_limited ON call_attempts (started_at) WHERE dial_state = 'LIMITED';

ALTER TABLE provider_webhooks DROP CONSTRAINT provider_webhooks_status_check;
ALTER TABLE provider_webhooks ADD CONSTRAINT provider_webhooks_status_check
    CHECK (status IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'CANCELED', 'LIMITED'));
-- Whose report it is: http (the generic contract, also the simulator's), retell, vapi,
-- twilio or elevenlabs. A status the reclaimer read from the provider's API is stored the
-- same way, under a webhook_id that starts with 'lookup:'.
ALTER TABLE provider_webhooks ADD COLUMN provider text NOT NULL DEFAULT 'http'
    CHECK (provider IN ('http', 'retell', 'vapi', 'twilio', 'elevenlabs'));
ALTER TABLE provider_webhooks ADD COLUMN attempt_key uuid;
ALTER TABLE provider_webhooks ADD COLUMN end_reason text
    CHECK (char_length(end_reason) <= 255);

-- When the reclaimer last asked the provider about this stale call: concurrent passes take
-- different calls, and a call the provider says is still live is asked again a while later.
ALTER TABLE calls ADD COLUMN looked_up_at timestamptz;
-- The metric of reports that the provider's concurrency limit stopped a call.
CREATE INDEX provider_webhooks_limited ON provider_webhooks (received_at) WHERE status = 'LIMITED';

-- The reclaimer's refill counts the messages on their way to free slots (recent nudges and
-- outbox marks), so that it sends no more than there is room for.
CREATE INDEX calls_nudged ON calls (nudged_at) WHERE nudged_at IS NOT NULL;
