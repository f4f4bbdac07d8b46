-- A scheduled export runs on one node at a time: the node holding a schedule's claim
-- until claimed_until (milliseconds) runs it and renews the claim while it runs; a claim
-- that lapsed (its node died mid-run) is taken by the next node that finds the run due.
CREATE TABLE lockbox_export_claims (
    schedule text PRIMARY KEY,
    node text NOT NULL,
    claimed_until bigint NOT NULL
);

-- Each node exports its own trail (its own chain of sequence numbers), so on a shared
-- store a schedule's watermark is per node: how far that node's trail has been exported.
CREATE TABLE lockbox_export_watermarks (
    schedule text NOT NULL,
    node text NOT NULL,
    watermark bigint NOT NULL,
    PRIMARY KEY (schedule, node)
);
