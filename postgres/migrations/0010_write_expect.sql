-- The write path's last check before it commits (postgres/write.go, writeSQL): a batch may
-- be decided against this instance's cached copy of its users' rows, and sent in the same
-- round trip as its COMMIT. If a row is not as the decision assumed, a user's lock is busy or
-- the guessed clock is off, this raises, the COMMIT that follows is never run, and the batch
-- is decided again from the rows read under its users' locks.
CREATE FUNCTION tally_expect(ok boolean) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'a user''s row is not as the write was decided against'
            USING ERRCODE = 'TL001';
    END IF;
    RETURN true;
END
$$;
