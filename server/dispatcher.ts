/**
 * The master's dispatcher: which worker gets the next connection. Its whole state is the load of each
 * ready worker and a bounded FIFO of connections waiting for room. A connection goes to the least-loaded
 * worker below its capacity; when all are full it waits in the FIFO; when the FIFO is full too, it is
 * refused (the master answers BUSY). Pure bookkeeping: no fds, no syscalls, so it is tested on its own.
 *
 * @module
 */

/** What {@link Dispatcher.offer} decided for a new connection. */
export type Placement = { worker: number } | "queued" | "refused";

/** Load-aware dispatch with a bounded queue. `T` is whatever the master keeps per waiting connection. */
export class Dispatcher<T> {
  readonly #capacity: number;
  readonly #queueLimit: number;
  readonly #load = new Map<number, number>();
  /** When each worker was last given a connection (a count of placements), to break ties between them. */
  readonly #lastGiven = new Map<number, number>();
  #placements = 0;
  readonly #queue: T[] = [];

  /**
   * @param capacity connections one worker serves at once (`--conns-per-worker`)
   * @param queueLimit connections allowed to wait when every worker is full (`--queue`)
   */
  constructor(capacity: number, queueLimit: number) {
    this.#capacity = capacity;
    this.#queueLimit = queueLimit;
  }

  /** Connections waiting in the queue. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Workers ready for connections. */
  get workers(): number {
    return this.#load.size;
  }

  /** Connections being served by `worker` (0 if unknown). */
  loadOf(worker: number): number {
    return this.#load.get(worker) ?? 0;
  }

  /** Makes `worker` available with no connections. */
  addWorker(worker: number): void {
    this.#load.set(worker, 0);
  }

  /** Forgets `worker` (it died or is stopping): its connections are gone with it. */
  removeWorker(worker: number): void {
    this.#load.delete(worker);
    this.#lastGiven.delete(worker);
  }

  /**
   * The least-loaded worker with room, or undefined. A tie goes to the worker given a connection least
   * recently (one never given any first, the lowest id among those): a connection waiting for its next
   * request holds no slot, so a client's second connection would otherwise join its first on one worker,
   * and the work both bring a moment later (a file sent on one, a signature computed for the other) would
   * share one core while another sat idle.
   */
  #pick(): number | undefined {
    let best: number | undefined;
    let bestLoad = this.#capacity;
    let bestGiven = 0;
    for (const [worker, load] of this.#load) {
      // Map order is the order workers became ready in (a respawned one comes last): compare ids on a tie.
      const given = this.#lastGiven.get(worker) ?? -1;
      const earlier = given < bestGiven || (given === bestGiven && best !== undefined && worker < best);
      if (load < bestLoad || (load === bestLoad && best !== undefined && earlier)) {
        [best, bestLoad, bestGiven] = [worker, load, given];
      }
    }
    return best;
  }

  /** Counts a new connection on `worker`. */
  #give(worker: number): void {
    this.#load.set(worker, this.loadOf(worker) + 1);
    this.#lastGiven.set(worker, this.#placements++);
  }

  /** Places a new connection: on a worker (its load is counted now), in the queue, or refused. */
  offer(conn: T): Placement {
    const worker = this.#queue.length === 0 ? this.#pick() : undefined;
    if (worker !== undefined) {
      this.#give(worker);
      return { worker };
    }
    if (this.#queue.length < this.#queueLimit) {
      this.#queue.push(conn);
      return "queued";
    }
    return "refused";
  }

  /** Undoes a placement whose hand-off failed: the worker's load drops, the connection goes first in line. */
  retract(worker: number, conn: T): void {
    if (this.#load.has(worker)) this.#load.set(worker, this.loadOf(worker) - 1);
    this.#queue.unshift(conn);
  }

  /** Records that `count` connections on `worker` ended. */
  release(worker: number, count = 1): void {
    if (this.#load.has(worker)) this.#load.set(worker, Math.max(0, this.loadOf(worker) - count));
  }

  /**
   * Records that `count` connections on `worker` that held no slot (they waited for their request) are
   * being answered again. The load may then exceed the capacity for a while: nothing more is placed on
   * that worker until it is back below.
   */
  take(worker: number, count: number): void {
    if (count > 0 && this.#load.has(worker)) this.#load.set(worker, this.loadOf(worker) + count);
  }

  /**
   * Takes the next queued connection that has a worker with room, counting it on that worker.
   * Call after {@link release} or {@link addWorker} until it returns undefined.
   */
  next(): { worker: number; conn: T } | undefined {
    if (this.#queue.length === 0) return undefined;
    const worker = this.#pick();
    if (worker === undefined) return undefined;
    this.#give(worker);
    return { worker, conn: this.#queue.shift()! };
  }

  /** Empties the queue, returning what waited (at shutdown). */
  drain(): T[] {
    return this.#queue.splice(0);
  }
}
