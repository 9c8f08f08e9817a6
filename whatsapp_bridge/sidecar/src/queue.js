// The durable outbox of inbound messages waiting for the host.
//
// Why on disk: Baileys acknowledges a message to WhatsApp as soon as it is decrypted; WhatsApp
// will not send it again. If the host is down or the sidecar crashes before the host has it, the
// only copy is ours. So an item is fsynced before `enqueue` returns and forgotten only after the
// host answered (2xx, or a 4xx poison verdict).
//
// Layout (two files, both rewritten only by rename, so a crash leaves the old or the new one):
//   <path>      append-only JSON lines, one per item: {"seq": <int>, "payload": {...}}
//   <path>.ack  {"acked": <seq>}: every item with seq <= acked is done
// Acking writes the .ack file (temp + fsync + rename + directory fsync). The item lines are
// compacted away later: truncated when nothing is pending, rewritten (temp + rename) once
// `compactEvery` acked lines have piled up, and on every open. Recording the acked *sequence
// number* rather than a byte offset is what makes compaction crash-safe in any order: a stale
// line is recognised by its seq whichever file generation it sits in.
//
// Rejected designs: a byte-offset ack file (wrong after a compaction that crashes between the
// rename and the offset write); rewriting the whole file on every ack (O(n) per message while a
// backlog drains); SQLite (a native dependency for a few hundred lines a day).
//
// A crash in the middle of an append leaves a torn last line without its newline: that item's
// `enqueue` never returned, so it is dropped on open (and counted). A corrupt line elsewhere is
// skipped with an error log rather than blocking every later message.
//
// Threading: everything here runs on the Node event loop and the file calls are synchronous, so
// there is no interleaving to reason about; one instance owns the files (do not open two on the
// same path).

import fs from 'node:fs';
import path from 'node:path';
import { silentLogger } from './log.js';

/** @typedef {{seq: number, payload: object}} QueueItem */

function fsyncDir(dir) {
  let fd;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Not every platform can fsync a directory; the rename is still atomic.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeFileDurably(file, data) {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

export class DurableQueue {
  /**
   * Open (creating if needed) the queue at `file`, recover pending items, compact.
   *
   * @param {string} file path of the JSON-lines file; its directory is created
   * @param {object} [opts]
   * @param {import('pino').Logger} [opts.logger]
   * @param {number} [opts.compactEvery=256] rewrite the file after this many acked lines
   * @returns {DurableQueue}
   */
  static open(file, { logger = silentLogger, compactEvery = 256 } = {}) {
    return new DurableQueue(path.resolve(file), logger, compactEvery);
  }

  constructor(file, logger, compactEvery) {
    this.file = file;
    this.ackFile = `${file}.ack`;
    this.log = logger;
    this.compactEvery = compactEvery;
    /** @type {QueueItem[]} */
    this.items = [];
    this.ackedSeq = 0;
    this.ackedLinesInFile = 0;
    this.recovery = { pending: 0, torn: 0, corrupt: 0 };
    this.waiters = [];
    this.fd = undefined;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.#recover();
    this.#rewrite();
  }

  #recover() {
    try {
      const ack = JSON.parse(fs.readFileSync(this.ackFile, 'utf8'));
      if (Number.isSafeInteger(ack?.acked) && ack.acked >= 0) this.ackedSeq = ack.acked;
      else throw new Error('no integer "acked"');
    } catch (err) {
      if (err.code !== 'ENOENT') {
        // Safer to deliver twice (the host dedupes on message id) than to lose anything.
        this.log.error({ file: this.ackFile, err: err.message }, 'queue ack file unreadable; redelivering all items');
      }
    }
    let text = '';
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
    const lines = text.split('\n');
    let lastSeq = this.ackedSeq;
    lines.forEach((line, i) => {
      if (line === '') return;
      const isTail = i === lines.length - 1; // no newline after it: the append never completed
      let rec;
      try {
        rec = JSON.parse(line);
        if (!Number.isSafeInteger(rec?.seq) || !rec.payload || typeof rec.payload !== 'object') {
          throw new Error('not a queue record');
        }
      } catch (err) {
        if (isTail) this.recovery.torn += 1;
        else {
          this.recovery.corrupt += 1;
          this.log.error({ file: this.file, line: i + 1, err: err.message }, 'queue line corrupt; skipped');
        }
        return;
      }
      if (rec.seq > lastSeq) lastSeq = rec.seq;
      if (rec.seq > this.ackedSeq) this.items.push({ seq: rec.seq, payload: rec.payload });
    });
    this.items.sort((a, b) => a.seq - b.seq);
    this.nextSeq = lastSeq + 1;
    this.recovery.pending = this.items.length;
    if (this.items.length || this.recovery.torn || this.recovery.corrupt) {
      this.log.info({ file: this.file, ...this.recovery }, 'queue recovered');
    }
  }

  #rewrite() {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    writeFileDurably(this.file, this.items.map((it) => `${JSON.stringify(it)}\n`).join(''));
    this.fd = fs.openSync(this.file, 'a');
    this.ackedLinesInFile = 0;
  }

  #assertOpen() {
    if (this.fd === undefined) throw new Error('queue is closed');
  }

  /** Number of items not yet acked. */
  get size() {
    return this.items.length;
  }

  /**
   * Append `payload` and fsync it. When this returns, the item survives a crash.
   *
   * @param {object} payload any JSON-serialisable object
   * @returns {number} the item's sequence number
   * @throws on a closed queue or an I/O error (nothing is added then)
   */
  enqueue(payload) {
    this.#assertOpen();
    const item = { seq: this.nextSeq, payload };
    fs.writeSync(this.fd, `${JSON.stringify(item)}\n`);
    fs.fdatasyncSync(this.fd);
    this.nextSeq += 1;
    this.items.push(item);
    for (const wake of this.waiters.splice(0)) wake();
    return item.seq;
  }

  /** The oldest pending item, or undefined. */
  peek() {
    return this.items[0];
  }

  /**
   * Mark the head item done, durably. Only the head may be acked: delivery is strictly in order.
   *
   * @param {number} seq must equal `peek().seq`
   * @throws {Error} when `seq` is not the head (a caller bug) or on I/O error
   */
  ack(seq) {
    this.#assertOpen();
    const head = this.items[0];
    if (!head || head.seq !== seq) {
      throw new Error(`ack(${seq}) is not the head of the queue (head is ${head ? head.seq : 'none'})`);
    }
    writeFileDurably(this.ackFile, JSON.stringify({ acked: seq }));
    this.ackedSeq = seq;
    this.items.shift();
    this.ackedLinesInFile += 1;
    if (this.items.length === 0) {
      fs.ftruncateSync(this.fd, 0);
      fs.fsyncSync(this.fd);
      this.ackedLinesInFile = 0;
    } else if (this.ackedLinesInFile >= this.compactEvery) {
      this.#rewrite();
    }
  }

  /**
   * Resolve when an item is pending (at once if one is) or when `signal` aborts.
   *
   * @param {AbortSignal} [signal]
   * @returns {Promise<void>}
   */
  waitForItem(signal) {
    if (this.items.length || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal?.removeEventListener('abort', done);
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve();
      };
      this.waiters.push(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Close the file. Pending items stay on disk for the next `open`. Idempotent. */
  close() {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    for (const wake of this.waiters.splice(0)) wake();
  }
}
