-- Outbound events (issue 17): signed events on every change of a call, sent to the endpoints
-- clients register (and to a call's own callbackUrl), and the provider's results kept.
--
-- The outbox is `call_events`: each row is written in the transaction of the change it
-- reports, so no change is reported that did not commit and none that committed is lost.
-- The notifier fans each event out to `webhook_deliveries` (one per endpoint subscribed
-- when the event happened, plus the call's callbackUrl) and sends them, recording every
-- attempt in `webhook_delivery_attempts`.

-- How many events the call has had: each change that reports an event increments it in the
-- same UPDATE, and the event carries the new value (receivers order by it, drop stale ones).
ALTER TABLE calls ADD COLUMN sequence bigint NOT NULL DEFAULT 0 CHECK (sequence >= 0);
-- What the provider reported beyond the outcome (summary, transcript or its URL, recording
-- URL, analysis, end reason), bounded in size by the code that writes it.
ALTER TABLE calls ADD COLUMN result jsonb CHECK (result IS NULL OR jsonb_typeof(result) = 'object');
-- The call's own event receiver, signed with the global CALLBACK_SECRET.
ALTER TABLE calls ADD COLUMN callback_url text CHECK (char_length(callback_url) BETWEEN 1 AND 2048);

-- A report's result, kept with the report: one held for a dial not recorded yet brings it
-- along when it is applied.
ALTER TABLE provider_webhooks ADD COLUMN result jsonb
    CHECK (result IS NULL OR jsonb_typeof(result) = 'object');

CREATE TABLE webhook_endpoints (
    id                          uuid        PRIMARY KEY,
    url                         text        NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    description                 text        CHECK (char_length(description) <= 512),
    -- NULL: every event type.
    event_types                 text[]      CHECK (event_types IS NULL OR cardinality(event_types) >= 1),
    enabled                     boolean     NOT NULL DEFAULT true,
    -- whsec_<base64 key>. Kept as is: signing needs the key itself.
    secret                      text        NOT NULL,
    -- After a rotation, the old secret signs too (a second signature) until it expires.
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    -- The start of the current run of failed attempts (cleared by a success); an endpoint
    -- failing for longer than ENDPOINT_DISABLE_AFTER_SECONDS is disabled.
    failing_since               timestamptz,
    disabled_reason             text        CHECK (char_length(disabled_reason) <= 512),
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);

CREATE TABLE call_events (
    id             uuid        PRIMARY KEY,
    -- A call's events (and their deliveries) go with it.
    call_id        uuid        NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    type           text        NOT NULL CHECK (type IN ('call.created', 'call.dialing',
                       'call.retry_scheduled', 'call.completed', 'call.failed', 'call.expired',
                       'call.canceled', 'call.result_updated')),
    -- The call as GET /calls/{id} showed it right after the change.
    data           jsonb       NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Set once the notifier has made the event's deliveries.
    fanned_out_at  timestamptz,
    UNIQUE (call_id, sequence)
);
CREATE INDEX call_events_to_fan_out ON call_events (created_at) WHERE fanned_out_at IS NULL;

CREATE TABLE webhook_deliveries (
    id                uuid        PRIMARY KEY,
    event_id          uuid        NOT NULL REFERENCES call_events (id) ON DELETE CASCADE,
    -- NULL: the call's callbackUrl. Deleting an endpoint deletes its deliveries.
    endpoint_id       uuid        REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The event's call and sequence: a receiver gets a call's events in sequence order.
    call_id           uuid        NOT NULL,
    sequence          bigint      NOT NULL,
    status            text        NOT NULL DEFAULT 'PENDING'
                      CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- Taken by a notifier until then: one that dies mid-send leaves it to be sent again.
    leased_until      timestamptz,
    -- Retried until then (at least 24 h by default), then FAILED and kept.
    retry_until       timestamptz NOT NULL,
    last_status_code  integer,
    last_error        text        CHECK (char_length(last_error) <= 1000),
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'DELIVERED') = (delivered_at IS NOT NULL))
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (event_id, endpoint_id) NULLS NOT DISTINCT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_in_order ON webhook_deliveries (endpoint_id, call_id, sequence)
    WHERE status = 'PENDING';

CREATE TABLE webhook_delivery_attempts (
    delivery_id   uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt_no    integer     NOT NULL CHECK (attempt_no >= 1),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    -- NULL until the attempt's result is recorded (a notifier that died mid-send leaves it).
    status_code   integer,
    latency_ms    integer     CHECK (latency_ms >= 0),
    error         text        CHECK (char_length(error) <= 1000),
    PRIMARY KEY (delivery_id, attempt_no)
);
