-- Each node's run (a random id per start) and whether that run stopped cleanly. A clean
-- stop marks its row instead of deleting it, and a heartbeat of the same run cannot undo
-- the mark: one sent before the stop but stored after it brought the row back, its ended
-- sessions listed as live, then the node named as silent for a day.
ALTER TABLE lockbox_nodes ADD COLUMN run text NOT NULL DEFAULT '';
ALTER TABLE lockbox_nodes ADD COLUMN stopped boolean NOT NULL DEFAULT false;
