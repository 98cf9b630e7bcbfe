-- Scale-out (issue 14): several server processes on one index and one object store. Cameras are
-- held by leases; a node records only the streams whose lease it holds. Unused (empty) when
-- `[cluster] enabled` is false, the default.

-- The nodes of a cluster, one row per `[cluster] node_id`, written by the node itself: inserted at
-- start, its heartbeat moved forward at every lease renewal. A node whose heartbeat is older than
-- its lease length is not counted as live when the cameras are shared out. Kept after a node stops
-- (GET /api/v1/cluster shows it with its last heartbeat) and replaced when it comes back.
CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY,    -- `[cluster] node_id` (default: an id stored beside the data)
    advertise_host TEXT NOT NULL,       -- how other nodes and clients reach it (`[cluster] advertise_host`)
    api_port       INTEGER,             -- its `[api]` listener port, NULL when the API is off
    video_port     INTEGER NOT NULL,    -- its `[video]` listener port
    lease_ms       BIGINT NOT NULL,     -- its `[cluster] lease_ms`
    started_us     BIGINT NOT NULL,     -- when the process started (database clock, µs)
    heartbeat_us   BIGINT NOT NULL      -- last successful renewal (database clock, µs)
);

-- Who records which stream. One row per enabled stream (added by any node that sees the stream
-- enabled, removed once it is disabled or deleted). A node takes a row whose lease has expired
-- (`expires_us` in the past, database clock) with `SELECT .. FOR UPDATE SKIP LOCKED`, so two nodes
-- never take the same row, and renews the rows it owns every third of its lease. A node that cannot
-- renew stops its cameras before `expires_us`, so the next owner starts after the last one stopped.
CREATE TABLE stream_leases (
    stream_id  UUID PRIMARY KEY,     -- streams.id (no foreign key: the row may outlive a deleted stream
                                     -- for a moment, and is then removed by the next lease pass)
    owner      TEXT,                 -- nodes.node_id of the holder; NULL when released
    expires_us BIGINT NOT NULL,      -- end of the lease (database clock, µs); in the past when free
    epoch      BIGINT NOT NULL       -- incremented every time the lease changes hands: segment rows
                                     -- written under an older epoch are refused (fencing)
);

-- Which node recorded a segment (`nodes.node_id`), NULL outside cluster mode. Until the segment is
-- uploaded its file is on that node's disk: the uploader of that node alone uploads it, and other
-- nodes read it through that node.
ALTER TABLE segments ADD COLUMN node_id TEXT;

-- Any change of a stream row is announced on channel `stream_changed` (payload: the stream id),
-- so the node holding the stream applies an API change made through any node at once.
-- NOTIFY is delivered at commit, and not at all when the transaction rolls back.
CREATE FUNCTION streams_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('stream_changed', OLD.id::text);
    ELSE
        PERFORM pg_notify('stream_changed', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER streams_notify_change AFTER INSERT OR UPDATE OR DELETE ON streams
    FOR EACH ROW EXECUTE FUNCTION streams_notify_change();
