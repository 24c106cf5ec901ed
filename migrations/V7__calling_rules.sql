-- Calling rules (issue 14): calling windows in the callee's time zones, a do-not-call list,
-- and a daily cap of dials per number. (V6 is the campaigns' migration.)

-- A call's rules, resolved when it is created (or its number changed), so that the claim
-- checks them without resolving anything again:
-- - calling_window: {"start": "HH:MM", "end": "HH:MM", "days": [...]} in local time, from
--   the call, its campaign or CALL_WINDOW; NULL: any time.
-- - timezone: the IANA name the client gave; NULL: the zones come from the number.
-- - time_zones: the zones the window must hold in, all of them (the strictest reading of a
--   number whose area code spans several).
ALTER TABLE calls ADD COLUMN calling_window jsonb
    CHECK (calling_window IS NULL OR jsonb_typeof(calling_window) = 'object');
ALTER TABLE calls ADD COLUMN timezone text CHECK (char_length(timezone) BETWEEN 1 AND 64);
ALTER TABLE calls ADD COLUMN time_zones text[] NOT NULL DEFAULT '{}';
ALTER TABLE calls ADD CONSTRAINT calls_window_has_zones
    CHECK (calling_window IS NULL OR cardinality(time_zones) >= 1);

-- The do-not-call list: a number here is never dialed. Writes take the number's advisory
-- lock (the claim's per-phone lock), so a suppression and a claim of a call to that number
-- are serialised: the call is either dialed before the suppression commits, or never.
CREATE TABLE suppressions (
    phone       text        PRIMARY KEY CHECK (phone ~ '^\+[1-9][0-9]{1,14}$'),
    reason      text        CHECK (char_length(reason) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Who added it: the caller's identity when one is known.
    created_by  text        CHECK (char_length(created_by) <= 512)
);

-- Every change of the list, kept: who made it and when.
CREATE TABLE suppression_changes (
    id          uuid        PRIMARY KEY,
    phone       text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('ADDED', 'UPDATED', 'REMOVED')),
    reason      text        CHECK (char_length(reason) <= 500),
    actor       text        CHECK (char_length(actor) <= 512),
    -- How it was made: put (PUT /suppressions/{phone}), csv (POST /suppressions), delete.
    source      text        NOT NULL CHECK (source IN ('put', 'csv', 'delete')),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppression_changes_phone ON suppression_changes (phone, changed_at);

-- The daily cap counts a number's dials of the last 24 h: its calls (calls_phone_newest),
-- then their attempts by start.
CREATE INDEX call_attempts_call_started ON call_attempts (call_id, started_at);
