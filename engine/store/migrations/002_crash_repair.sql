-- 002: crash repair — which process owns an open call, and when it was last known alive.
--
-- A process that dies (SIGKILL, OOM, power loss) cannot write the end of its
-- calls. Each process (engine.repair) registers itself in `call_owners` and
-- stamps `seen_at` there and on its open calls every few seconds; a process
-- starting up, and every live process periodically, closes the open calls of
-- owners that are gone: `ended_at` = the call's last stamp, `end_reason` =
-- 'lost'. An owner id is host:pid:nonce, one per process start, so a restarted
-- process with the same pid (pid 1 in a container) is never mistaken for the
-- dead one.

ALTER TABLE calls ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE calls ADD COLUMN seen_at DOUBLE PRECISION;
CREATE INDEX calls_open_owner ON calls (owner) WHERE ended_at IS NULL;

CREATE TABLE call_owners (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    seen_at     DOUBLE PRECISION NOT NULL
);
