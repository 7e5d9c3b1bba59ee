-- Whether the active relay wants to be woken when events commit. A notifying commit costs
-- every concurrent writer (PostgreSQL commits notifying transactions one at a time), and the
-- wake-up only matters while the relay waits between sparse events; at high event rates it
-- reads without waiting anyway. The relay sets this flag from the event rate it sees; with no
-- relay running it stays off and writers never notify.
CREATE TABLE outbox_wakeup (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    wanted   boolean NOT NULL DEFAULT false
);
INSERT INTO outbox_wakeup DEFAULT VALUES;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT wanted FROM outbox_wakeup) THEN
        PERFORM pg_notify('tally_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
