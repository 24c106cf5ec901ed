-- Campaigns (issue 13): lists of calls added in bulk, followed, paused, resumed and canceled
-- as a whole, each with its own share of the global cap.
--
-- A campaign's status is what the operator chose: ACTIVE (its calls are dialed), PAUSED
-- (its waiting calls are not claimed; those in progress finish) or CANCELED (its PENDING
-- calls were canceled with it, and it takes no new ones). The API shows an ACTIVE campaign
-- with nothing left to dial as COMPLETED.

CREATE TABLE campaigns (
    id               uuid        PRIMARY KEY,
    name             text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- The default scriptId of its calls.
    script_id        text        CHECK (char_length(script_id) BETWEEN 1 AND 128),
    -- Its most calls in progress at once (within GLOBAL_CONCURRENCY); NULL: no limit of
    -- its own.
    max_concurrency  integer     CHECK (max_concurrency BETWEEN 1 AND 10000),
    -- The default expiresAt of its calls.
    expires_at       timestamptz,
    -- The default callbackUrl of its calls.
    callback_url     text        CHECK (char_length(callback_url) BETWEEN 1 AND 2048),
    status           text        NOT NULL DEFAULT 'ACTIVE'
                     CHECK (status IN ('ACTIVE', 'PAUSED', 'CANCELED')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    canceled_at      timestamptz,
    CHECK ((status = 'CANCELED') = (canceled_at IS NOT NULL))
);
CREATE INDEX campaigns_newest ON campaigns (created_at DESC, id DESC);
-- The fair pick walks the ACTIVE campaigns only.
CREATE INDEX campaigns_active ON campaigns (id) WHERE status = 'ACTIVE';

ALTER TABLE calls ADD COLUMN campaign_id uuid REFERENCES campaigns (id);

-- A campaign's counts per status (GET /campaigns/{id}, /metrics) and its cancel.
CREATE INDEX calls_campaign_status ON calls (campaign_id, status) WHERE campaign_id IS NOT NULL;
-- The fair pick: per campaign, its oldest due waiting calls (LATERAL ... LIMIT), and the
-- calls without a campaign as a group of their own.
CREATE INDEX calls_campaign_pending_due ON calls (campaign_id, next_run_at) WHERE status = 'PENDING';
-- Calls in progress per campaign (the claim's per-campaign limit, the fair share).
CREATE INDEX calls_campaign_in_progress ON calls (campaign_id) WHERE status = 'IN_PROGRESS';
-- GET /calls?campaignId=: a campaign's calls newest first, by keyset.
CREATE INDEX calls_campaign_newest ON calls (campaign_id, created_at DESC, id DESC) WHERE campaign_id IS NOT NULL;
-- Dials in the last hour per campaign (its progress page).
CREATE INDEX calls_campaign_started ON calls (campaign_id, started_at) WHERE campaign_id IS NOT NULL;
