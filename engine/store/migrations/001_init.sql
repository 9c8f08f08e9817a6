-- 001: the initial schema.
--
-- Portable SQL: the same text runs on SQLite (3.35+) and PostgreSQL (13+).
-- Hence: TEXT keys (lead ids are UUIDs made by the store, not serials), wall
-- clock times as DOUBLE PRECISION seconds since the epoch, JSON kept as TEXT,
-- and no foreign keys (a turn may be journaled and replayed before its call
-- row, and a webhook and its WebSocket may run in different processes).
-- schema_migrations is created by the migration runner itself, not here.

CREATE TABLE businesses (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    profile     TEXT NOT NULL DEFAULT '{}',
    updated_at  DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE calls (
    call_sid     TEXT PRIMARY KEY,
    stream_sid   TEXT NOT NULL DEFAULT '',
    business_id  TEXT NOT NULL DEFAULT '',
    from_number  TEXT NOT NULL DEFAULT '',
    to_number    TEXT NOT NULL DEFAULT '',
    started_at   DOUBLE PRECISION,
    ended_at     DOUBLE PRECISION,
    end_reason   TEXT NOT NULL DEFAULT '',
    summary      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX calls_started_at ON calls (started_at);

CREATE TABLE turns (
    call_sid     TEXT NOT NULL,
    turn_index   INTEGER NOT NULL,
    transcript   TEXT NOT NULL DEFAULT '',
    reply        TEXT NOT NULL DEFAULT '',
    interrupted  BOOLEAN NOT NULL DEFAULT FALSE,
    stamps       TEXT NOT NULL DEFAULT '{}',
    dtmf         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (call_sid, turn_index)
);

CREATE TABLE leads (
    id           TEXT PRIMARY KEY,
    business_id  TEXT NOT NULL DEFAULT '',
    source       TEXT NOT NULL,
    ref          TEXT NOT NULL,
    fields       TEXT NOT NULL DEFAULT '{}',
    complete     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    UNIQUE (source, ref)
);
CREATE INDEX leads_updated_at ON leads (updated_at);

CREATE TABLE chats (
    chat_id      TEXT PRIMARY KEY,
    business_id  TEXT NOT NULL DEFAULT '',
    last_at      DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX chats_last_at ON chats (last_at);

CREATE TABLE whatsapp_messages (
    message_id   TEXT PRIMARY KEY,
    chat_id      TEXT NOT NULL,
    business_id  TEXT NOT NULL DEFAULT '',
    direction    TEXT NOT NULL,
    text         TEXT NOT NULL DEFAULT '',
    at           DOUBLE PRECISION NOT NULL
);
CREATE INDEX whatsapp_messages_chat_at ON whatsapp_messages (chat_id, at);
