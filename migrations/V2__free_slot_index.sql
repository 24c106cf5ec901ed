-- The claim looks for the lowest free slot; without this index it walks past every held
-- slot first, so a claim slowed down as more calls were in progress.
CREATE INDEX call_slots_free ON call_slots (slot_no) WHERE call_id IS NULL;
