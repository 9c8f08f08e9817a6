-- 003: presence — every host process, its heartbeat and what it holds live.
--
-- One row per process (engine.presence): it upserts its row every heartbeat
-- with the state the admin view merges (live calls with their actor trees,
-- chats, counters, WhatsApp pairing), and deletes it on a clean exit. A row
-- whose heartbeat is older than a few seconds belongs to a process that died:
-- readers ignore it and the next process to sweep deletes it. Heartbeats are
-- stamped with the database's clock, so hosts with skewed clocks still agree.

CREATE TABLE processes (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL,
    live_calls    INTEGER NOT NULL DEFAULT 0,
    live_chats    INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX processes_heartbeat_at ON processes (heartbeat_at);

-- Which process held a call (kept after it ended, for the admin view and for
-- closing the calls of a process that died).
CREATE TABLE call_processes (
    call_sid    TEXT PRIMARY KEY,
    process_id  TEXT NOT NULL,
    seen_at     DOUBLE PRECISION NOT NULL
);
CREATE INDEX call_processes_process_id ON call_processes (process_id);

-- Operator actions for a call held by another process (end, restart an
-- actor): the holder picks its commands up at its next heartbeat.
CREATE TABLE admin_commands (
    id          TEXT PRIMARY KEY,
    process_id  TEXT NOT NULL,
    call_sid    TEXT NOT NULL,
    action      TEXT NOT NULL,
    role        TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL,
    done_at     DOUBLE PRECISION,
    result      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX admin_commands_pending ON admin_commands (process_id, done_at);
