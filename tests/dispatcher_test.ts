/**
 * Unit tests of the master's dispatcher: placement on the least-loaded worker with room, the bounded FIFO
 * queue behind it, refusal past the bound, and the bookkeeping of releases, dead workers and failed
 * hand-offs. The dispatcher is pure bookkeeping, so these run it directly with strings as connections.
 */

import assert from "node:assert/strict";
import { Dispatcher } from "../server/dispatcher.ts";

/** A dispatcher with workers `ids` added, all idle. */
function dispatcher(capacity: number, queue: number, ids: number[]): Dispatcher<string> {
  const d = new Dispatcher<string>(capacity, queue);
  for (const id of ids) d.addWorker(id);
  return d;
}

Deno.test("dispatcher: each new connection goes to the least-loaded worker, ties to the one given a connection least recently", () => {
  const d = dispatcher(4, 10, [1, 2, 3]);
  assert.deepEqual(["a", "b", "c", "d"].map((c) => d.offer(c)), [
    { worker: 1 },
    { worker: 2 },
    { worker: 3 },
    { worker: 1 },
  ]);
  assert.deepEqual([d.loadOf(1), d.loadOf(2), d.loadOf(3)], [2, 1, 1]);
  // Worker 3 finishes its connection: it is now the least loaded, even with a higher id.
  d.release(3);
  d.release(2);
  assert.deepEqual(d.offer("e"), { worker: 2 }, "2 and 3 tie at 0: 2 was given one before 3");
  assert.deepEqual(d.offer("f"), { worker: 3 });
  assert.deepEqual([d.loadOf(1), d.loadOf(2), d.loadOf(3)], [2, 1, 1]);
});

Deno.test("dispatcher: among workers never given a connection, ties go to the lowest id whatever the order they became ready in", () => {
  const d = dispatcher(4, 10, [3, 1, 2]);
  assert.deepEqual(d.offer("a"), { worker: 1 });
  // Worker 1 dies and is respawned: it is ready last, never given a connection, and the lowest id.
  d.removeWorker(1);
  d.addWorker(1);
  assert.deepEqual(d.offer("b"), { worker: 1 });
  assert.deepEqual(d.offer("c"), { worker: 2 });
  assert.deepEqual(d.offer("d"), { worker: 3 });
});

Deno.test("dispatcher: a connection that went quiet leaves its worker tied with an idle one, and the next goes to the idle one", () => {
  const d = dispatcher(4, 10, [1, 2]);
  // A client's first connection; its request answered, it waits for the next one and holds no slot.
  assert.deepEqual(d.offer("first"), { worker: 1 });
  d.release(1);
  // Its second connection: worker 1 would have it by its id, but it was given one just now.
  assert.deepEqual(d.offer("second"), { worker: 2 });
  d.release(2);
  assert.deepEqual(d.offer("third"), { worker: 1 }, "and the turns go on");
  // The first connection's next request takes its slot again: worker 1 is the more loaded.
  d.take(1, 1);
  assert.deepEqual(d.offer("fourth"), { worker: 2 });
});

Deno.test("dispatcher: no worker gets more connections than its capacity; the rest wait in the queue", () => {
  const d = dispatcher(2, 100, [1, 2]);
  const placements = Array.from({ length: 7 }, (_, i) => d.offer(`c${i}`));
  assert.deepEqual(placements.slice(0, 4), [{ worker: 1 }, { worker: 2 }, { worker: 1 }, { worker: 2 }]);
  assert.deepEqual(placements.slice(4), ["queued", "queued", "queued"]);
  assert.equal(d.loadOf(1), 2);
  assert.equal(d.loadOf(2), 2);
  assert.equal(d.queued, 3);
  assert.equal(d.next(), undefined, "nothing moves while every worker is full");
});

Deno.test("dispatcher: with no worker ready, connections queue; a worker that becomes ready takes them in order", () => {
  const d = new Dispatcher<string>(2, 10);
  assert.equal(d.offer("a"), "queued");
  assert.equal(d.offer("b"), "queued");
  assert.equal(d.offer("c"), "queued");
  assert.equal(d.next(), undefined);
  d.addWorker(7);
  assert.deepEqual(d.next(), { worker: 7, conn: "a" });
  assert.deepEqual(d.next(), { worker: 7, conn: "b" });
  assert.equal(d.next(), undefined, "worker 7 is at its capacity of 2");
  assert.equal(d.queued, 1);
});

Deno.test("dispatcher: queued connections leave in FIFO order, and a newcomer never overtakes them", () => {
  const d = dispatcher(1, 10, [1]);
  assert.deepEqual(d.offer("first"), { worker: 1 });
  for (const c of ["q1", "q2", "q3"]) assert.equal(d.offer(c), "queued");
  d.release(1);
  // Worker 1 has room again, but q1..q3 came first: the newcomer queues behind them.
  assert.equal(d.offer("late"), "queued");
  const order: string[] = [];
  for (let i = 0; i < 4; i++) {
    const next = d.next();
    assert.ok(next !== undefined);
    assert.equal(next.worker, 1);
    order.push(next.conn);
    assert.equal(d.next(), undefined, "one at a time on a worker of capacity 1");
    d.release(1);
  }
  assert.deepEqual(order, ["q1", "q2", "q3", "late"]);
  assert.equal(d.queued, 0);
});

Deno.test("dispatcher: past the queue bound new connections are refused, and accepted again once it drains", () => {
  const d = dispatcher(1, 2, [1]);
  assert.deepEqual(d.offer("a"), { worker: 1 });
  assert.equal(d.offer("b"), "queued");
  assert.equal(d.offer("c"), "queued");
  assert.equal(d.offer("d"), "refused");
  assert.equal(d.offer("e"), "refused");
  assert.equal(d.queued, 2, "refused connections are not kept");
  d.release(1);
  assert.deepEqual(d.next(), { worker: 1, conn: "b" });
  assert.equal(d.offer("f"), "queued", "room in the queue again");
  assert.equal(d.offer("g"), "refused");
});

Deno.test("dispatcher: a queue bound of 0 refuses as soon as every worker is full", () => {
  const d = dispatcher(1, 0, [1, 2]);
  assert.deepEqual(d.offer("a"), { worker: 1 });
  assert.deepEqual(d.offer("b"), { worker: 2 });
  assert.equal(d.offer("c"), "refused");
  assert.equal(d.queued, 0);
});

Deno.test("dispatcher: after a release, next() hands the oldest queued connection to the freed worker", () => {
  const d = dispatcher(1, 10, [1, 2, 3]);
  for (const c of ["a", "b", "c"]) d.offer(c);
  for (const c of ["w1", "w2", "w3"]) assert.equal(d.offer(c), "queued");
  d.release(2);
  assert.deepEqual(d.next(), { worker: 2, conn: "w1" });
  assert.equal(d.next(), undefined);
  d.release(3);
  d.release(1);
  assert.deepEqual(d.next(), { worker: 1, conn: "w2" });
  assert.deepEqual(d.next(), { worker: 3, conn: "w3" });
  assert.equal(d.next(), undefined);
  assert.deepEqual([d.loadOf(1), d.loadOf(2), d.loadOf(3)], [1, 1, 1]);
});

Deno.test("dispatcher: a release never takes a worker's load below zero, and releases of unknown workers are ignored", () => {
  const d = dispatcher(2, 10, [1]);
  d.release(1);
  assert.equal(d.loadOf(1), 0);
  d.release(9);
  assert.equal(d.loadOf(9), 0);
  assert.deepEqual(d.offer("a"), { worker: 1 }, "worker 9 was not created by its release");
  assert.deepEqual(d.offer("b"), { worker: 1 });
  assert.equal(d.offer("c"), "queued");
});

Deno.test("dispatcher: a removed worker gets no more connections, and its load is forgotten", () => {
  const d = dispatcher(2, 10, [1, 2]);
  d.offer("a");
  d.offer("b");
  d.removeWorker(1);
  assert.equal(d.loadOf(1), 0);
  assert.deepEqual(d.offer("c"), { worker: 2 });
  assert.equal(d.offer("d"), "queued", "worker 2 is full and worker 1 is gone");
  d.release(1); // a late Done from the dead worker changes nothing
  assert.equal(d.next(), undefined);
  // The slot is respawned: the new worker starts idle and takes the queue.
  d.addWorker(1);
  assert.deepEqual(d.next(), { worker: 1, conn: "d" });
  assert.equal(d.loadOf(1), 1);
});

Deno.test("dispatcher: when every worker is removed, new connections queue until one is added", () => {
  const d = dispatcher(3, 10, [1]);
  d.removeWorker(1);
  assert.equal(d.offer("a"), "queued");
  assert.equal(d.next(), undefined);
  d.addWorker(2);
  assert.deepEqual(d.next(), { worker: 2, conn: "a" });
});

Deno.test("dispatcher: retract undoes a failed hand-off: the load drops and the connection is first in line", () => {
  const d = dispatcher(1, 10, [1, 2]);
  assert.deepEqual(d.offer("a"), { worker: 1 });
  assert.deepEqual(d.offer("b"), { worker: 2 });
  assert.equal(d.offer("c"), "queued");
  // Handing "b" to worker 2 failed (its channel is full or gone).
  d.retract(2, "b");
  assert.equal(d.loadOf(2), 0);
  assert.equal(d.queued, 2);
  assert.deepEqual(d.next(), { worker: 2, conn: "b" }, "the retracted connection goes before c");
  d.release(1);
  assert.deepEqual(d.next(), { worker: 1, conn: "c" });
});

Deno.test("dispatcher: retract on a worker that is gone only requeues the connection", () => {
  const d = dispatcher(1, 10, [1]);
  assert.deepEqual(d.offer("a"), { worker: 1 });
  d.removeWorker(1);
  d.retract(1, "a");
  assert.equal(d.loadOf(1), 0);
  assert.equal(d.queued, 1);
  assert.equal(d.next(), undefined);
  d.addWorker(1);
  assert.deepEqual(d.next(), { worker: 1, conn: "a" });
});

Deno.test("dispatcher: drain empties the queue in order and leaves loads alone", () => {
  const d = dispatcher(1, 10, [1]);
  d.offer("a");
  d.offer("b");
  d.offer("c");
  assert.deepEqual(d.drain(), ["b", "c"]);
  assert.equal(d.queued, 0);
  assert.equal(d.loadOf(1), 1);
  assert.deepEqual(d.drain(), []);
});
