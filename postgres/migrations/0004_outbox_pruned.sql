-- The greatest stream position pruning has deleted. A feed cursor before it would skip the
-- deleted events, so the feed refuses such a cursor instead of answering from what is left.
CREATE TABLE outbox_pruned (
    only_row  boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    txid      xid8        NOT NULL,
    position  bigint      NOT NULL,
    pruned_at timestamptz NOT NULL DEFAULT now()
);
