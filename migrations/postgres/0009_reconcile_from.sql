-- Incremental reconciliation (issue 13). When a reconciliation pass over a storage root finishes
-- cleanly, the wall-clock time at which it started listing the root is stored here. The next pass
-- skips every directory of the root whose change time (ctime: it moves whenever an entry is
-- created, removed or renamed in the directory, or the directory itself is renamed, and user
-- space cannot set it back) is older than that, less a margin for timestamp granularity: nothing
-- in such a directory can have changed since it was last reconciled (archive::repair). NULL: no
-- clean pass yet, so the next one looks at everything.
ALTER TABLE storage_roots ADD COLUMN reconciled_from_us BIGINT;
