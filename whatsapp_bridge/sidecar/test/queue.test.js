import assert from 'node:assert/strict';
import fs from 'node:fs';
import test from 'node:test';
import { DurableQueue } from '../src/queue.js';
import { payload, tmpDir } from './support.js';

const ids = (q) => q.items.map((i) => i.payload.id);

test('items survive a crash: a new instance on the same file has every pending item, in order', (t) => {
  const file = `${tmpDir(t)}/sub/outbox.jsonl`; // directory is created
  const a = DurableQueue.open(file);
  for (let n = 1; n <= 5; n += 1) a.enqueue(payload(n));
  a.ack(a.peek().seq); // MSG1 delivered
  // "crash": no close(), the fd is simply abandoned
  const b = DurableQueue.open(file);
  t.after(() => { a.close(); b.close(); });
  assert.deepEqual(ids(b), ['MSG2', 'MSG3', 'MSG4', 'MSG5']);
  assert.equal(b.recovery.pending, 4);
  // New items go after the recovered ones, with fresh sequence numbers.
  const seq = b.enqueue(payload(6));
  assert.ok(seq > b.items[3].seq);
  assert.deepEqual(ids(b), ['MSG2', 'MSG3', 'MSG4', 'MSG5', 'MSG6']);
});

test('acked items are never seen again, across restarts and compactions', (t) => {
  const file = `${tmpDir(t)}/outbox.jsonl`;
  let q = DurableQueue.open(file, { compactEvery: 2 });
  for (let n = 1; n <= 7; n += 1) q.enqueue(payload(n));
  const seen = [];
  for (let round = 0; round < 7; round += 1) {
    const head = q.peek();
    seen.push(head.payload.id);
    q.ack(head.seq);
    q.close();
    q = DurableQueue.open(file, { compactEvery: 2 }); // restart after every ack
  }
  t.after(() => q.close());
  assert.deepEqual(seen, ['MSG1', 'MSG2', 'MSG3', 'MSG4', 'MSG5', 'MSG6', 'MSG7']);
  assert.equal(q.size, 0);
  assert.equal(fs.readFileSync(file, 'utf8'), '', 'an empty queue leaves an empty file');
  // Sequence numbers keep rising after the file was emptied (the ack file remembers).
  const seq = q.enqueue(payload(8));
  assert.ok(seq > 7, `seq ${seq}`);
});

test('compaction keeps exactly the pending items and later appends still land', (t) => {
  const file = `${tmpDir(t)}/outbox.jsonl`;
  const q = DurableQueue.open(file, { compactEvery: 3 });
  t.after(() => q.close());
  for (let n = 1; n <= 6; n += 1) q.enqueue(payload(n));
  for (let n = 0; n < 3; n += 1) q.ack(q.peek().seq); // third ack triggers a rewrite
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).payload.id);
  assert.deepEqual(lines, ['MSG4', 'MSG5', 'MSG6']);
  q.enqueue(payload(7));
  const again = DurableQueue.open(file);
  t.after(() => again.close());
  assert.deepEqual(ids(again), ['MSG4', 'MSG5', 'MSG6', 'MSG7']);
});

test('a torn last line (crash mid-append) is dropped; a corrupt middle line is skipped', (t) => {
  const file = `${tmpDir(t)}/outbox.jsonl`;
  const q = DurableQueue.open(file);
  q.enqueue(payload(1));
  q.enqueue(payload(2));
  q.close();
  const good = fs.readFileSync(file, 'utf8').split('\n');
  fs.writeFileSync(file, `${good[0]}\n{not json}\n${good[1]}\n{"seq": 3, "payl`);
  const r = DurableQueue.open(file);
  t.after(() => r.close());
  assert.deepEqual(ids(r), ['MSG1', 'MSG2']);
  assert.deepEqual(r.recovery, { pending: 2, torn: 1, corrupt: 1 });
  r.enqueue(payload(3)); // must not be glued onto the torn line
  const r2 = DurableQueue.open(file);
  t.after(() => r2.close());
  assert.deepEqual(ids(r2), ['MSG1', 'MSG2', 'MSG3']);
});

test('an unreadable ack file means redelivery, never loss', (t) => {
  const file = `${tmpDir(t)}/outbox.jsonl`;
  const q = DurableQueue.open(file);
  q.enqueue(payload(1));
  q.enqueue(payload(2));
  q.ack(q.peek().seq);
  q.close();
  fs.writeFileSync(`${file}.ack`, 'garbage');
  const r = DurableQueue.open(file);
  t.after(() => r.close());
  // MSG1's line was not compacted away yet, so without the ack record it is delivered again
  // (the host dedupes on id) rather than anything being dropped.
  assert.deepEqual(ids(r), ['MSG1', 'MSG2']);
});

test('ack of anything but the head is refused; closed queue refuses enqueue', (t) => {
  const q = DurableQueue.open(`${tmpDir(t)}/outbox.jsonl`);
  q.enqueue(payload(1));
  q.enqueue(payload(2));
  assert.throws(() => q.ack(q.items[1].seq), /not the head/);
  assert.throws(() => q.ack(999), /not the head/);
  q.close();
  assert.throws(() => q.enqueue(payload(3)), /closed/);
});

test('waitForItem resolves on enqueue and on abort', async (t) => {
  const q = DurableQueue.open(`${tmpDir(t)}/outbox.jsonl`);
  t.after(() => q.close());
  const waiting = q.waitForItem();
  q.enqueue(payload(1));
  await waiting;
  q.ack(q.peek().seq);
  const ac = new AbortController();
  const aborted = q.waitForItem(ac.signal);
  ac.abort();
  await aborted;
  assert.equal(q.waiters.length, 0, 'no leaked waiters');
});
