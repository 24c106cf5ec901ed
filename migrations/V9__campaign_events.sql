-- Campaign events: campaign.created, campaign.paused, campaign.resumed, campaign.canceled and
-- campaign.completed, through the same outbox, fan-out and deliveries as a call's events.
--
-- `call_events` is the outbox of every event: a row reports a change of its call (call_id)
-- or of its campaign (campaign_id), never both. So the notifier's fan-out, the nudges'
-- look (`call_events_to_fan_out`), redelivery and the deliveries' uniqueness serve both
-- without a second path. A call's event rows are written exactly as before: the new column
-- is NULL, the new index is partial (it gets no entry for them), and the new checks are
-- evaluated on the row alone.

-- How many events the campaign has had: each change that reports one increments it in the
-- same transaction, and the event carries the new value (receivers order by it).
ALTER TABLE campaigns ADD COLUMN sequence bigint NOT NULL DEFAULT 0 CHECK (sequence >= 0);
-- When its latest campaign.completed was written (the reclaimer's pass: an ACTIVE campaign
-- with calls, none of them PENDING or IN_PROGRESS). NULL until then, and again once calls
-- added after it are seen (campaign_reopened): a new campaign.completed follows their end.
ALTER TABLE campaigns ADD COLUMN completed_at timestamptz;
-- The reclaimer's pass looks only at the campaigns that may still complete.
CREATE INDEX campaigns_to_complete ON campaigns (id) WHERE status = 'ACTIVE' AND completed_at IS NULL;

-- Calls were added to a campaign after its campaign.completed. The adding transaction holds
-- the campaign FOR SHARE (as every add does), so it cannot clear completed_at itself without
-- risking a deadlock with another add; it leaves a row here, and the reclaimer's next pass,
-- with the campaign locked, clears completed_at and the row.
CREATE TABLE campaign_reopened (
    campaign_id  uuid        PRIMARY KEY REFERENCES campaigns (id),
    reopened_at  timestamptz NOT NULL DEFAULT now()
);

-- No foreign key to campaigns (nothing deletes a campaign): a key would queue a referential
-- check trigger for every call event inserted, NULL or not.
ALTER TABLE call_events ADD COLUMN campaign_id uuid;
ALTER TABLE call_events ALTER COLUMN call_id DROP NOT NULL;
-- NOT VALID: the existing rows satisfy both by construction (V5's NOT NULL call_id and
-- call.* types), so the table is not scanned under an exclusive lock; new rows are checked.
ALTER TABLE call_events ADD CONSTRAINT call_events_subject CHECK (
    CASE WHEN type LIKE 'campaign.%' THEN call_id IS NULL AND campaign_id IS NOT NULL
         ELSE call_id IS NOT NULL AND campaign_id IS NULL END) NOT VALID;
ALTER TABLE call_events DROP CONSTRAINT call_events_type_check;
ALTER TABLE call_events ADD CONSTRAINT call_events_type_check CHECK (type IN ('call.created',
    'call.dialing', 'call.retry_scheduled', 'call.completed', 'call.failed', 'call.expired',
    'call.canceled', 'call.result_updated', 'campaign.created', 'campaign.paused',
    'campaign.resumed', 'campaign.canceled', 'campaign.completed')) NOT VALID;
CREATE UNIQUE INDEX call_events_campaign_sequence ON call_events (campaign_id, sequence)
    WHERE campaign_id IS NOT NULL;

-- A delivery of a campaign's event names its campaign (and no call): a receiver gets a
-- campaign's events in sequence order, as it does a call's.
ALTER TABLE webhook_deliveries ADD COLUMN campaign_id uuid;
ALTER TABLE webhook_deliveries ALTER COLUMN call_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_subject
    CHECK (num_nonnulls(call_id, campaign_id) = 1) NOT VALID;
CREATE INDEX webhook_deliveries_campaign_in_order ON webhook_deliveries (endpoint_id, campaign_id, sequence)
    WHERE status = 'PENDING' AND campaign_id IS NOT NULL;
