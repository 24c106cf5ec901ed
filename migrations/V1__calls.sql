-- Ebra's system of record. The state machine lives in these tables: CHECK constraints make
-- impossible rows impossible, and the indexes serve the claim, the sweeps and the list.

CREATE TABLE calls (
    id               uuid        PRIMARY KEY,
    phone            text        NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{1,14}$'),
    script_id        text        NOT NULL CHECK (char_length(script_id) BETWEEN 1 AND 128),
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    status           text        NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
    last_error       text,
    -- What the provider reported for the last settled attempt, and how long it lasted.
    outcome          text        CHECK (outcome IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER')),
    duration_sec     integer     CHECK (duration_sec >= 0),
    scheduled_at     timestamptz,
    expires_at       timestamptz,
    -- When the call may next be dialed (scheduledAt, or the end of a backoff).
    next_run_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    ended_at         timestamptz,
    -- Outbox (invariant 4): set, in the transaction that makes the call dialable, to the time
    -- by which the worker should have received its SQS message; cleared by the worker's first
    -- receipt. The reclaimer re-sends messages for PENDING calls whose mark is overdue.
    outbox_due_at    timestamptz,
    -- Last time a freed slot nudged this call onto the queue (invariant 8).
    nudged_at        timestamptz,
    -- Set when the last dial's outcome is unknown (timeout): the next dial reuses this key,
    -- so the provider can deduplicate it (invariant 3).
    retry_dial_key   uuid,
    idempotency_key  text        UNIQUE CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     text,
    CHECK ((status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')) = (ended_at IS NOT NULL)),
    CHECK (status <> 'IN_PROGRESS' OR started_at IS NOT NULL),
    CHECK (status = 'PENDING' OR outbox_due_at IS NULL),
    CHECK (attempts <= max_attempts),
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL)),
    CHECK (expires_at IS NULL OR scheduled_at IS NULL OR expires_at > scheduled_at)
);

-- Invariant 2's backstop: the claim serialises per phone, this makes a slip impossible.
CREATE UNIQUE INDEX calls_one_in_progress_per_phone ON calls (phone) WHERE status = 'IN_PROGRESS';
CREATE INDEX calls_pending_due ON calls (next_run_at) WHERE status = 'PENDING';
CREATE INDEX calls_in_progress_since ON calls (started_at) WHERE status = 'IN_PROGRESS';
CREATE INDEX calls_outbox_due ON calls (outbox_due_at) WHERE outbox_due_at IS NOT NULL;
CREATE INDEX calls_pending_expiry ON calls (expires_at) WHERE status = 'PENDING' AND expires_at IS NOT NULL;
CREATE INDEX calls_pending_created ON calls (created_at) WHERE status = 'PENDING';
CREATE INDEX calls_newest ON calls (created_at DESC, id DESC);
CREATE INDEX calls_status_newest ON calls (status, created_at DESC, id DESC);

-- Invariant 1: one row per concurrency slot. A call holds a slot from the claim until it
-- leaves IN_PROGRESS, and the claim takes a free slot with FOR UPDATE SKIP LOCKED, so the
-- number of calls in progress can never exceed the number of slots it may take
-- (slot_no <= GLOBAL_CONCURRENCY).
CREATE TABLE call_slots (
    slot_no    integer     PRIMARY KEY CHECK (slot_no BETWEEN 1 AND 10000),
    call_id    uuid        UNIQUE REFERENCES calls (id),
    claimed_at timestamptz,
    CHECK ((call_id IS NULL) = (claimed_at IS NULL))
);
INSERT INTO call_slots (slot_no) SELECT generate_series(1, 10000);

-- One row per dial: the audit trail, the Idempotency-Key sent to the provider, and the
-- provider's call id that webhooks are matched on.
CREATE TABLE call_attempts (
    id                uuid        PRIMARY KEY,
    call_id           uuid        NOT NULL REFERENCES calls (id),
    attempt_no        integer     NOT NULL CHECK (attempt_no >= 1),
    idempotency_key   uuid        NOT NULL,
    slot_no           integer     NOT NULL,
    -- DIALING: claimed, dial not answered yet; ACCEPTED: the provider returned its call id;
    -- UNKNOWN: the dial may or may not have been placed; REJECTED: definitely not placed.
    dial_state        text        NOT NULL DEFAULT 'DIALING'
                      CHECK (dial_state IN ('DIALING', 'ACCEPTED', 'UNKNOWN', 'REJECTED')),
    provider_call_id  text        CHECK (char_length(provider_call_id) BETWEEN 1 AND 255),
    started_at        timestamptz NOT NULL DEFAULT now(),
    dialed_at         timestamptz,
    ended_at          timestamptz,
    outcome           text        CHECK (outcome IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER')),
    duration_sec      integer     CHECK (duration_sec >= 0),
    error             text,
    UNIQUE (call_id, attempt_no),
    CHECK ((dial_state = 'ACCEPTED') = (provider_call_id IS NOT NULL))
);
CREATE INDEX call_attempts_provider_call ON call_attempts (provider_call_id) WHERE provider_call_id IS NOT NULL;

-- Every verified webhook, keyed by its webhook-id: duplicates are recognised, and one that
-- arrives before the worker recorded the provider's call id waits here until it does.
CREATE TABLE provider_webhooks (
    webhook_id        text        PRIMARY KEY CHECK (char_length(webhook_id) BETWEEN 1 AND 255),
    provider_call_id  text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('COMPLETED', 'FAILED', 'BUSY', 'NO_ANSWER')),
    duration_sec      integer     CHECK (duration_sec >= 0),
    completed_at      timestamptz,
    received_at       timestamptz NOT NULL DEFAULT now(),
    applied_at        timestamptz,
    -- What settling it did: APPLIED, DUPLICATE, SUPERSEDED, IGNORED_TERMINAL.
    disposition       text
);
CREATE INDEX provider_webhooks_unapplied ON provider_webhooks (provider_call_id) WHERE applied_at IS NULL;
