/**
 * `mirror`'s signatures asked for ahead: the large files it will patch by delta one after another each
 * need their version's signature (`sig`), which the server may have to compute (a read of the whole
 * file). Asked for on a second connection as soon as the run knows of each file (while the listing still
 * streams in), the signatures are computed while the rest of the listing, the small files and the files
 * before them are dealt with, and are in hand when each file's turn comes; `delta_fetch.ts` then finds its
 * chunks in the old copy by following the signature instead of cutting all of it.
 *
 * A signature asked for ahead is only a head start: one that did not come (a refusal, a connection lost)
 * is asked for again on the main connection, as if there had been no prefetch, and answered or refused
 * there as usual.
 *
 * @module
 */

import type { ResponseHeader } from "../framing.ts";
import { readSignatureBytes, signatureRequest } from "./delta_fetch.ts";
import { ServerRefusal } from "./failure.ts";
import type { Session } from "./session.ts";

/**
 * Signatures asked for and not yet taken, at most: each is held in memory once it came (a 1 GiB file's is
 * under 400 KB), and the requests in flight must fit the socket buffers.
 */
export const SIGNATURES_AHEAD = 8;

/** A `sig` answer read ahead. */
export interface EarlySignature {
  /** The header, as the server sent it (checked by the taker, as any `sig` header). */
  header: ResponseHeader;
  /** The encoded signature that followed it; null for an answer that the copy is current. */
  bytes: Uint8Array | null;
}

/** One file's signature asked for ahead: whether it came yet, and it (null: ask again). */
export interface Prefetched {
  /** The `ifNoneMatch` it was asked with: an answer to another question is not taken. */
  readonly ifNoneMatch: string | undefined;
  /** True once {@link answer} has settled: the taker need not cut its old copy while waiting. */
  readonly ready: boolean;
  /** The answer, or null when it did not come. */
  readonly answer: Promise<EarlySignature | null>;
}

/** A file whose signature is wanted. */
export interface Wanted {
  /** Its path on the server. */
  path: string;
  /** The SHA-256 of the local copy, if known: asked as `ifNoneMatch`. */
  localSha256?: string;
  /**
   * The version the caller's listing named. A signature of another one is not taken: the file changed
   * since, or this connection reached another server (behind a balancer), whose etags differ, so that
   * ranges asked for by it on the main connection would be refused.
   */
  etag?: string;
}

/**
 * Asks for the signatures of the files wanted, in the order they are added, on `session` (a connection of
 * its own, opened with the first request), a few ahead.
 */
export class SignaturePrefetch {
  readonly #session: Session;
  /** Each file wanted, in the order added: what is asked, what the taker gets, and how its answer settles. */
  readonly #entries: { file: Wanted; entry: Prefetched; settle: (a: EarlySignature | null) => void }[] = [];
  readonly #at = new Map<string, number>();
  /** The first entry not taken or given up: those from here on are the taker's to come. */
  #cursor = 0;
  #wake: (() => void) | null = null;
  #closed = false;
  readonly #done: Promise<void>;

  /**
   * @param session a session of its own (see `Session.sibling`), closed by {@link close}
   * @param wanted the first files wanted; more may follow ({@link add})
   */
  constructor(session: Session, wanted: readonly Wanted[] = []) {
    this.#session = session;
    for (const file of wanted) this.add(file);
    this.#done = this.#run();
  }

  /** Wants the signature of one more file, after those added before it (a path added again is ignored). */
  add(file: Wanted): void {
    if (this.#closed || this.#at.has(file.path)) return;
    let resolve!: (a: EarlySignature | null) => void;
    const answer = new Promise<EarlySignature | null>((r) => resolve = r);
    const entry = { ifNoneMatch: file.localSha256, ready: false, answer };
    this.#at.set(file.path, this.#entries.length);
    this.#entries.push({
      file,
      entry,
      settle: (a) => {
        entry.ready = true;
        resolve(a);
      },
    });
    this.#wake?.();
  }

  /** The place of `path` among the files wanted (in the order added), if it was. */
  orderOf(path: string): number | undefined {
    return this.#at.get(path);
  }

  /**
   * The signature of `path` asked for ahead, if it was. Those before it not taken are given up (the run
   * went past them), and the room they held goes to the next requests.
   */
  take(path: string): Prefetched | undefined {
    const at = this.#at.get(path);
    if (at === undefined || at < this.#cursor) return undefined;
    for (; this.#cursor < at; this.#cursor++) this.#entries[this.#cursor].settle(null);
    this.#cursor = at + 1;
    this.#wake?.();
    return this.#entries[at].entry;
  }

  /** Stops asking, and closes the connection; what was not taken is dropped. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    await this.#session.close();
    await this.#done;
  }

  async #run(): Promise<void> {
    let sent = 0, read = 0;
    try {
      while (!this.#closed) {
        // Files the taker went past (given up) before their requests went out are not asked for; the one
        // it took is, even if it was taken before its request could go out.
        while (read === sent && sent < this.#cursor && this.#entries[sent].entry.ready) read = ++sent;
        const room = Math.min(SIGNATURES_AHEAD - (sent - this.#cursor), this.#entries.length - sent);
        if (room > 0) {
          await this.#session.sendAhead(
            this.#entries.slice(sent, sent + room).map(({ file }) =>
              signatureRequest(file.path, file.localSha256)
            ),
          );
          sent += room;
        }
        if (read < sent) {
          this.#entries[read].settle(await this.#read(this.#entries[read].file));
          read++;
        } else {
          // Until a file is added, one is taken (making room), or the run ends.
          await new Promise<void>((resolve) => this.#wake = resolve);
          this.#wake = null;
        }
      }
    } catch {
      // The connection is gone: every signature not read yet is asked for again by its taker.
    }
    this.#closed = true; // a file added from now on is not asked for here: its taker asks itself
    for (const { settle } of this.#entries) settle(null); // a settled answer stays as it was
  }

  /**
   * Reads the next answer; null for a refusal or another version than `etag` (the taker asks again, and is
   * answered there).
   */
  async #read({ path, etag }: Wanted): Promise<EarlySignature | null> {
    const answer = await readSignatureAnswer(this.#session, path);
    return answer !== null && (etag === undefined || answer.header.etag === etag) ? answer : null;
  }
}

/**
 * Reads the next answer owed on `session` to a `sig` sent ahead for `path`: its header and signature, or
 * null for a refusal. Throws for a malformed answer or a lost connection.
 */
export async function readSignatureAnswer(session: Session, path: string): Promise<EarlySignature | null> {
  const what = JSON.stringify(path);
  let header: ResponseHeader;
  try {
    header = await session.next(what);
  } catch (e) {
    if (e instanceof ServerRefusal) return null;
    throw e;
  }
  if (header.unchanged === true) {
    await session.finish();
    return { header, bytes: null };
  }
  const size = header.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw new Error(`the signature of ${what} came without a size`); // a taker asks again, and fails there
  }
  return { header, bytes: await readSignatureBytes(session, what, header.signatureLength, size) };
}
