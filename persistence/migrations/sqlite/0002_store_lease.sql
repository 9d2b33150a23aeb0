-- One writer per store (issue 13). The single row names the daemon that holds the store and
-- the lease epoch it holds it under. A daemon takes the lease at start (SQLite: an exclusive
-- flock on `<db>.lock` decides who may take it; PostgreSQL: a session advisory lock), then
-- bumps `epoch`. Every journal commit checks, inside its transaction, that `epoch` is still
-- its own, so a writer that lost the lease cannot write (fencing).
CREATE TABLE store_lease (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    epoch           INTEGER NOT NULL,
    holder_host     TEXT    NOT NULL,
    holder_pid      INTEGER NOT NULL,
    holder_boot     INTEGER,
    acquired_at_us  INTEGER NOT NULL,
    heartbeat_us    INTEGER NOT NULL,
    released        INTEGER NOT NULL DEFAULT 0
) STRICT;
