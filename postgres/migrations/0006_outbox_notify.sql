-- Wakes the active relay when events commit: one notification per INSERT statement on outbox,
-- delivered by PostgreSQL at commit (and dropped on rollback), whichever code path wrote the
-- rows. The relay LISTENs on tally_outbox and still polls, so a lost notification only costs
-- a poll interval.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
