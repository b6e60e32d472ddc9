/**
 * The signatures of the large files `mirror` fetches whole (a first copy, or a file with no old copy worth
 * a delta), asked for on a connection of their own while the files come, and kept (`signature_store.ts`):
 * the first delta of each then plans from its signature instead of reading and cutting the copy, which on a
 * host is a read of the whole file from the disk. The server signs a version once for all its clients (its
 * signature cache), so a fleet's first copies cost it one signing per file, and it signs the next version
 * by following this one.
 *
 * Only a head start: a refusal, an answer of another version or a lost connection leave that file's first
 * delta to cut the copy, as without it. A signature is kept under the version's SHA-256 the server names
 * in its answer, and only taken for a copy the state vouches to have that SHA-256.
 *
 * @module
 */

import { signatureRequest } from "./delta_fetch.ts";
import type { Session } from "./session.ts";
import { readSignatureAnswer, SIGNATURES_AHEAD } from "./signature_prefetch.ts";
import type { SignatureStore } from "./signature_store.ts";

/** The least time {@link WholeFileSignatures.close} waits for the answers still owed. */
const MIN_WAIT_MS = 1000;

/** A file fetched whole whose signature is wanted. */
interface Wanted {
  /** Its path below LOCAL_DIR (the store's key). */
  rel: string;
  /** Its path on the server. */
  path: string;
  /** The version the listing named: the signature of another one is not kept. */
  etag?: string;
}

/** Asks for the signatures of files fetched whole, in the order wanted, and keeps each that comes. */
export class WholeFileSignatures {
  readonly #session: Session;
  readonly #store: Promise<SignatureStore>;
  readonly #wanted: Wanted[] = [];
  #wake: (() => void) | null = null;
  #closing = false;
  readonly #done: Promise<void>;
  readonly #started = performance.now();

  /** @param session a session of its own (see `Session.sibling`), closed by {@link close} */
  constructor(session: Session, store: Promise<SignatureStore>) {
    this.#session = session;
    this.#store = store;
    this.#done = this.#run();
  }

  /** Wants the signature of one more file. */
  want(file: Wanted): void {
    if (this.#closing) return;
    this.#wanted.push(file);
    this.#wake?.();
  }

  /**
   * Closes the connection once the answers to what was asked are in and kept (the server signs while the
   * files come, so by the end of the fetch most are), or at once when `wait` is false (the run failed).
   * It waits at most as long as the run has taken since the first signature was asked for, and at least
   * {@link MIN_WAIT_MS}: a server too busy to sign in that time does not hold the run up further, and the
   * signatures not in by then are done without.
   */
  async close(wait = true): Promise<void> {
    this.#closing = true;
    this.#wake?.();
    if (wait) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waitMs = Math.max(MIN_WAIT_MS, performance.now() - this.#started);
      await Promise.race([this.#done, new Promise<void>((resolve) => timer = setTimeout(resolve, waitMs))]);
      clearTimeout(timer);
    }
    await this.#session.close();
    await this.#done;
  }

  async #run(): Promise<void> {
    let sent = 0, read = 0;
    try {
      const store = await this.#store;
      for (;;) {
        const room = Math.min(SIGNATURES_AHEAD - (sent - read), this.#wanted.length - sent);
        if (room > 0) {
          const asked = this.#wanted.slice(sent, sent + room);
          await this.#session.sendAhead(asked.map(({ path }) => signatureRequest(path, undefined)));
          sent += room;
        }
        if (read < sent) {
          this.#keep(
            store,
            this.#wanted[read],
            await readSignatureAnswer(this.#session, this.#wanted[read].path),
          );
          read++;
        } else if (this.#closing) return;
        else {
          await new Promise<void>((resolve) => this.#wake = resolve);
          this.#wake = null;
        }
      }
    } catch {
      // The connection is gone, or an answer was malformed: the files not kept yet will cut their copies.
    }
  }

  #keep(
    store: SignatureStore,
    file: Wanted,
    answer: Awaited<ReturnType<typeof readSignatureAnswer>>,
  ): void {
    if (answer === null || answer.bytes === null) return;
    const { header, bytes } = answer;
    if (typeof header.sha256 !== "string" || (file.etag !== undefined && header.etag !== file.etag)) return;
    store.save(file.rel, header.sha256, bytes);
  }
}
