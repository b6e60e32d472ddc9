/**
 * A counting TCP relay on 127.0.0.1: case 8 puts one in front of ferry's server and one in front of the
 * rsync daemon, so the bytes on the wire of both tools are counted the same way, at the socket, in each
 * direction. It forwards every byte as soon as it is read, with Nagle off on both legs (as both tools set
 * it on their own sockets), and passes half-closes on. With a rate, it is also a slow link: each direction
 * carries at most that many bytes per second, shared by all connections (the compression case's 100 Mbit/s).
 *
 * @module
 */

/** Bytes the relay forwarded since the last reset. */
export interface WireBytes {
  /** Client to server. */
  up: number;
  /** Server to client. */
  down: number;
}

/** A running relay. */
export interface Relay {
  /** The port clients connect to. */
  port: number;
  /** Bytes forwarded since the last `reset()`. */
  readonly bytes: WireBytes;
  /** Zeroes the counts. */
  reset(): void;
  /** Resolves once no connection is open (or after `timeoutMs`), so a count includes a client's last bytes. */
  idle(timeoutMs?: number): Promise<void>;
  /** Stops accepting and closes every connection. */
  close(): Promise<void>;
}

const BUFFER = 256 * 1024;

/**
 * Bytes read at a time on a rate-limited relay: at 100 Mbit/s, 16 KiB is 1.3 ms of the link, so the bytes
 * go out in a steady stream rather than in bursts of a whole buffer.
 */
const PACED_BUFFER = 16 * 1024;

/** How far behind its schedule a paced direction may catch up, in milliseconds. */
const PACER_CREDIT_MS = 20;

/** One direction of a slow link: when its next byte may leave, given the bytes already sent. */
class Pacer {
  #nextFree = 0;
  /** @param bytesPerSecond the link's rate */
  constructor(readonly bytesPerSecond: number) {}

  /** Waits until `n` more bytes may leave. */
  async take(n: number): Promise<void> {
    const now = performance.now();
    // A timer that fires late leaves the link idle: up to PACER_CREDIT_MS of that is made up afterwards,
    // so the rate is the link's, not the timers'; an idle link earns no more credit than that.
    const start = Math.max(this.#nextFree, now - PACER_CREDIT_MS);
    this.#nextFree = start + n / this.bytesPerSecond * 1000;
    if (start > now) await new Promise((resolve) => setTimeout(resolve, start - now));
  }
}

/** Copies `from` to `to` until end of stream, adding every chunk to `count`; then half-closes `to`. */
async function pump(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  count: (n: number) => void,
  pacer: Pacer | null,
): Promise<void> {
  const buffer = new Uint8Array(pacer === null ? BUFFER : PACED_BUFFER);
  for (;;) {
    const n = await from.read(buffer);
    if (n === null) break;
    count(n);
    await pacer?.take(n);
    for (let done = 0; done < n;) done += await to.write(buffer.subarray(done, n));
  }
  await to.closeWrite();
}

/** Options of {@link startRelay}. */
export interface RelayOptions {
  /** Bytes per second each direction carries at most, all connections together; none: as fast as it can. */
  bytesPerSecond?: number;
}

/** Starts a relay on a free port of 127.0.0.1 that forwards to 127.0.0.1:`target`. */
export function startRelay(target: number, options: RelayOptions = {}): Relay {
  const rate = options.bytesPerSecond;
  const pacers = rate === undefined ? null : { up: new Pacer(rate), down: new Pacer(rate) };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const bytes: WireBytes = { up: 0, down: 0 };
  const open = new Set<Deno.TcpConn>();
  const sessions = new Set<Promise<void>>();
  let idleWaiters: (() => void)[] = [];

  const serve = async (client: Deno.TcpConn) => {
    let server: Deno.TcpConn | null = null;
    open.add(client);
    try {
      server = await Deno.connect({ hostname: "127.0.0.1", port: target });
      open.add(server);
      client.setNoDelay(true);
      server.setNoDelay(true);
      // Either side resetting ends both directions: the first failure closes both sockets below.
      await Promise.all([
        pump(client, server, (n) => bytes.up += n, pacers?.up ?? null),
        pump(server, client, (n) => bytes.down += n, pacers?.down ?? null),
      ]);
    } catch {
      /* a reset or a closed relay: the connection is over either way */
    } finally {
      for (const conn of [client, server]) {
        if (conn === null) continue;
        open.delete(conn);
        try {
          conn.close();
        } catch { /* already closed */ }
      }
      if (open.size === 0) {
        for (const wake of idleWaiters) wake();
        idleWaiters = [];
      }
    }
  };

  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const session = serve(conn);
        sessions.add(session);
        session.then(() => sessions.delete(session));
      }
    } catch { /* the listener was closed */ }
  })();

  return {
    port: (listener.addr as Deno.NetAddr).port,
    bytes,
    reset() {
      bytes.up = 0;
      bytes.down = 0;
    },
    idle(timeoutMs = 5000) {
      if (open.size === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
    async close() {
      listener.close();
      for (const conn of open) {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
      await accepting;
      await Promise.all(sessions);
    },
  };
}
