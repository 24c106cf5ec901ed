-- The single-column rules of the tables every call writes (calls, call_attempts,
-- provider_webhooks, call_events, call_slots) become domains; the rules that relate columns
-- (the state machine's) stay CHECK constraints on their tables.
--
-- Why: Postgres rebuilds a table's CHECK constraints from their stored text (`stringToNode`)
-- and plans them again in every statement that writes a row of it, whatever columns the
-- statement sets. `calls` had 22 (17,489 characters of stored node text), so every write of
-- a call parsed and planned all of them: `ExecConstraints` was 8.6 % of all CPU samples
-- during `ebra bench --only e2e` (perf); with every CHECK dropped, as an experiment, the
-- same bench's Postgres CPU fell from a median of 11.9 to 10.7 CPU-s per 2,000 calls, and
-- with this migration from 11.1 to 10.5 (README, footnote 14). A domain's rules are
-- parsed and planned once per connection (Postgres caches them with the type) and checked
-- only where a statement assigns the column, so a settle that sets `status` checks the
-- status alone.
--
-- The rules themselves are unchanged: each domain carries the CHECK its column had (NULL
-- passes a domain's CHECK, as it passed the column's). A value the rule refuses fails with
-- SQLSTATE 23514 (check_violation), as before, naming the domain's constraint.
--
-- For the code: a parameter assigned straight to a domain column (`INSERT ... VALUES ($1)`,
-- `SET status = $1`) takes the domain's type, which the Postgres client does not bind Rust
-- strings or integers to, so such parameters are cast to the base type (`$1::text`).
-- Comparisons (`status = $1`) and `unnest($1::text[])` are unaffected. Rows come back with
-- the base type.
--
-- Operations: changing a column's type to a domain rewrites the table and rebuilds its
-- indexes under an ACCESS EXCLUSIVE lock (every row is checked against the domain). On a
-- large deployment run it in a quiet moment, as for V10-V12.

CREATE DOMAIN e164_phone AS text CHECK (VALUE ~ '^\+[1-9][0-9]{1,14}$');
CREATE DOMAIN call_status AS text
    CHECK (VALUE IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'));
CREATE DOMAIN call_outcome AS text
    CHECK (VALUE IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'CANCELED'));
-- A dial's outcome and a provider's report: a call's outcomes, and LIMITED (the provider
-- refused the dial for its own concurrency limit).
CREATE DOMAIN report_outcome AS text
    CHECK (VALUE IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER', 'VOICEMAIL', 'CANCELED', 'LIMITED'));
CREATE DOMAIN dial_state AS text
    CHECK (VALUE IN ('DIALING', 'ACCEPTED', 'UNKNOWN', 'REJECTED', 'LIMITED'));
CREATE DOMAIN provider_name AS text
    CHECK (VALUE IN ('http', 'retell', 'vapi', 'twilio', 'elevenlabs'));
CREATE DOMAIN event_type AS text
    CHECK (VALUE IN ('call.created', 'call.dialing', 'call.retry_scheduled', 'call.completed',
                     'call.failed', 'call.expired', 'call.canceled', 'call.result_updated',
                     'campaign.created', 'campaign.paused', 'campaign.resumed',
                     'campaign.canceled', 'campaign.completed'));
CREATE DOMAIN json_object AS jsonb CHECK (jsonb_typeof(VALUE) = 'object');
CREATE DOMAIN script_id AS text CHECK (char_length(VALUE) BETWEEN 1 AND 128);
-- An identifier given by a client or a provider: an idempotency key, a provider's call or
-- webhook id.
CREATE DOMAIN external_id AS text CHECK (char_length(VALUE) BETWEEN 1 AND 255);
CREATE DOMAIN callback_url AS text CHECK (char_length(VALUE) BETWEEN 1 AND 2048);
CREATE DOMAIN time_zone_name AS text CHECK (char_length(VALUE) BETWEEN 1 AND 64);
CREATE DOMAIN end_reason AS text CHECK (char_length(VALUE) <= 255);
CREATE DOMAIN slot_number AS integer CHECK (VALUE BETWEEN 1 AND 10000);
CREATE DOMAIN nonnegative_int AS integer CHECK (VALUE >= 0);
CREATE DOMAIN positive_int AS integer CHECK (VALUE >= 1);
CREATE DOMAIN nonnegative_bigint AS bigint CHECK (VALUE >= 0);
CREATE DOMAIN positive_bigint AS bigint CHECK (VALUE >= 1);

ALTER TABLE calls
    DROP CONSTRAINT calls_phone_check,
    DROP CONSTRAINT calls_script_id_check,
    DROP CONSTRAINT calls_metadata_check,
    DROP CONSTRAINT calls_status_check,
    DROP CONSTRAINT calls_attempts_check,
    DROP CONSTRAINT calls_max_attempts_check,
    DROP CONSTRAINT calls_outcome_check,
    DROP CONSTRAINT calls_duration_sec_check,
    DROP CONSTRAINT calls_idempotency_key_check,
    DROP CONSTRAINT calls_sequence_check,
    DROP CONSTRAINT calls_result_check,
    DROP CONSTRAINT calls_callback_url_check,
    DROP CONSTRAINT calls_calling_window_check,
    DROP CONSTRAINT calls_timezone_check,
    ALTER COLUMN phone TYPE e164_phone,
    ALTER COLUMN script_id TYPE script_id,
    ALTER COLUMN metadata TYPE json_object,
    ALTER COLUMN status TYPE call_status,
    ALTER COLUMN attempts TYPE nonnegative_int,
    ALTER COLUMN max_attempts TYPE positive_int,
    ALTER COLUMN outcome TYPE call_outcome,
    ALTER COLUMN duration_sec TYPE nonnegative_int,
    ALTER COLUMN idempotency_key TYPE external_id,
    ALTER COLUMN sequence TYPE nonnegative_bigint,
    ALTER COLUMN result TYPE json_object,
    ALTER COLUMN callback_url TYPE callback_url,
    ALTER COLUMN calling_window TYPE json_object,
    ALTER COLUMN timezone TYPE time_zone_name;

ALTER TABLE call_attempts
    DROP CONSTRAINT call_attempts_attempt_no_check,
    DROP CONSTRAINT call_attempts_dial_state_check,
    DROP CONSTRAINT call_attempts_provider_call_id_check,
    DROP CONSTRAINT call_attempts_outcome_check,
    DROP CONSTRAINT call_attempts_duration_sec_check,
    DROP CONSTRAINT call_attempts_end_reason_check,
    ALTER COLUMN attempt_no TYPE positive_int,
    ALTER COLUMN dial_state TYPE dial_state,
    ALTER COLUMN provider_call_id TYPE external_id,
    ALTER COLUMN outcome TYPE report_outcome,
    ALTER COLUMN duration_sec TYPE nonnegative_int,
    ALTER COLUMN end_reason TYPE end_reason;

ALTER TABLE provider_webhooks
    DROP CONSTRAINT provider_webhooks_webhook_id_check,
    DROP CONSTRAINT provider_webhooks_status_check,
    DROP CONSTRAINT provider_webhooks_duration_sec_check,
    DROP CONSTRAINT provider_webhooks_result_check,
    DROP CONSTRAINT provider_webhooks_provider_check,
    DROP CONSTRAINT provider_webhooks_end_reason_check,
    ALTER COLUMN webhook_id TYPE external_id,
    ALTER COLUMN status TYPE report_outcome,
    ALTER COLUMN duration_sec TYPE nonnegative_int,
    ALTER COLUMN result TYPE json_object,
    ALTER COLUMN provider TYPE provider_name,
    ALTER COLUMN end_reason TYPE end_reason;

ALTER TABLE call_events
    DROP CONSTRAINT call_events_type_check,
    DROP CONSTRAINT call_events_data_check,
    DROP CONSTRAINT call_events_sequence_check,
    ALTER COLUMN type TYPE event_type,
    ALTER COLUMN data TYPE json_object,
    ALTER COLUMN sequence TYPE positive_bigint;

ALTER TABLE call_slots
    DROP CONSTRAINT call_slots_slot_no_check,
    ALTER COLUMN slot_no TYPE slot_number;
