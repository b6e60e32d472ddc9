/**
 * Reopening the served directory on reload. `--root /srv/current`, where `current` is a symlink switched
 * to each new release, is opened once when the worker starts; a reload opens the path again, and if it
 * now leads to another directory, new requests resolve their paths in it. A connection keeps the root
 * it began with for its whole life (a mirror sees one release, not a mix), and a transfer in flight reads
 * from the file it opened, so the old root's fd is closed only once every connection that was open at
 * the reload has ended.
 *
 * @module
 */

import { close, fstat, openRead } from "../ffi/libc.ts";
import type { ServeConfig } from "./connection.ts";

/** A root replaced by a reload: its fd, and the connections that may still resolve paths in it. */
interface RetiredRoot {
  fd: number;
  holders: Set<{ readonly closed: boolean }>;
}

/** The served directory of one worker, reopened by {@link ServedRoot.reload}. */
export class ServedRoot {
  readonly #path: string;
  readonly #config: ServeConfig;
  readonly #connections: () => Iterable<{ readonly closed: boolean }>;
  readonly #retired: RetiredRoot[] = [];

  /**
   * @param path the `--root` path as given (symlinks in it are followed again at each reload)
   * @param config the worker's shared config, whose `rootFd` is the root new requests use
   * @param connections the worker's open connections now
   */
  constructor(path: string, config: ServeConfig, connections: () => Iterable<{ readonly closed: boolean }>) {
    this.#path = path;
    this.#config = config;
    this.#connections = connections;
  }

  /** Opens the path again; returns what changed, or null if it is still the same directory. */
  reload(): string | null {
    this.releaseUnused();
    const fresh = openRead(this.#path, { directory: true });
    const before = fstat(this.#config.rootFd);
    const now = fstat(fresh);
    if (now.dev === before.dev && now.ino === before.ino) {
      close(fresh);
      return null;
    }
    this.#retired.push({ fd: this.#config.rootFd, holders: new Set(this.#connections()) });
    this.#config.rootFd = fresh;
    // The old tree's folders would keep their watches (and take up the worker's share) for nothing.
    this.#config.listingMemo.watchAnew();
    return `${this.#path} reopened: another directory now (inode ${now.ino}, was ${before.ino}); ` +
      `connections open before keep the old one`;
  }

  /** Closes the old roots that no open connection can use any more. */
  releaseUnused(): void {
    for (let i = this.#retired.length - 1; i >= 0; i--) {
      const retired = this.#retired[i];
      for (const conn of retired.holders) if (conn.closed) retired.holders.delete(conn);
      if (retired.holders.size === 0) {
        close(retired.fd);
        this.#retired.splice(i, 1);
      }
    }
  }

  /** Old roots still held open for connections that began in them. */
  get retiredCount(): number {
    return this.#retired.length;
  }
}
