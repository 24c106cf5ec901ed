-- A campaign's calling window (issue 14): its calls' window when a call has none of its own,
-- before the deployment's CALL_WINDOW. The same JSON as a call's `calling_window`.
ALTER TABLE campaigns ADD COLUMN calling_window jsonb;
