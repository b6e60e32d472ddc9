/**
 * What `mirror` remembers between runs, like git's index: for each file it published, the file's identity
 * as `lstat` saw it right after publication (size, mtime, ctime, inode), its SHA-256, and the server's etag
 * of the version it came from. A later run trusts a local file whose `lstat` still matches and hashes only
 * the others.
 *
 * The state is only ever a shortcut. Any change to a file moves its ctime (which no program can set back),
 * and a replaced file has another inode, so a stale entry cannot make a changed file look current; a
 * missing or corrupt state costs hashing, nothing else. One race remains, the one git calls "racy clean":
 * a change in the same clock tick as the `lstat` that was recorded, which leaves ctime as it was. Entries
 * recorded within {@link RACY_WINDOW_NS} of the moment the state was written are therefore not trusted.
 *
 * The file is text: a version line, then one line per file with the fields separated by tabs and the path
 * last, as a JSON string (paths may hold tabs and newlines).
 *
 * @module
 */

import { isSha256Hex } from "../framing.ts";
import {
  C,
  close,
  fstat,
  LibcError,
  mkdirAt,
  OPEN,
  openAt,
  pread,
  pwriteAll,
  renameAt,
  unlinkAt,
} from "../ffi/libc.ts";
import { LocalDir, LocalIoError } from "./local_tree.ts";

/** The first line of a state file. */
const STATE_HEADER = "ferry-mirror-state 1";

/**
 * How close to the state's own write time an entry's ctime may be and still be trusted. File systems stamp
 * times from a clock that advances in ticks of up to 10 ms; twice that leaves a margin.
 */
export const RACY_WINDOW_NS = 20_000_000n;

/** What `lstat` says of a local file: the fields an entry is checked against. */
export interface LocalIdentity {
  /** Size in bytes. */
  size: number;
  /** Modification time, nanoseconds since the epoch. */
  mtimeNs: bigint;
  /** Status change time, nanoseconds since the epoch. */
  ctimeNs: bigint;
  /** Inode number. */
  ino: bigint;
}

/** One published file. */
export interface StateEntry extends LocalIdentity {
  /** SHA-256 of its content, hex. */
  sha256: string;
  /** The server's etag of the version it came from ("" if the server gave none). */
  etag: string;
}

/** The state of one LOCAL_DIR: entries by path relative to it. */
export class MirrorState {
  readonly #entries = new Map<string, StateEntry>();
  #writtenAtNs: bigint;
  #newestCtimeNs = 0n;

  /** @param writtenAtNs when the state was written (the file's mtime); entries near it are racy */
  constructor(writtenAtNs = 0n) {
    this.#writtenAtNs = writtenAtNs;
  }

  /** Number of entries. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * The entry for `path` if the local file `local` is, by its identity, still the one recorded, and the
   * record is not racy; undefined otherwise (the caller hashes the file).
   */
  trusted(path: string, local: LocalIdentity): StateEntry | undefined {
    const entry = this.#entries.get(path);
    if (entry === undefined) return undefined;
    if (
      entry.size !== local.size || entry.mtimeNs !== local.mtimeNs || entry.ctimeNs !== local.ctimeNs ||
      entry.ino !== local.ino
    ) return undefined;
    if (entry.ctimeNs + RACY_WINDOW_NS >= this.#writtenAtNs) return undefined;
    return entry;
  }

  /** Records (or replaces) the entry for `path`. */
  set(path: string, entry: StateEntry): void {
    this.#entries.set(path, entry);
    if (entry.ctimeNs > this.#newestCtimeNs) this.#newestCtimeNs = entry.ctimeNs;
  }

  /**
   * Waits, at most a racy window, until the clock has moved past every ctime recorded, so that the state
   * written next is not racy for them and the next run trusts them all: one wait of up to 20 ms per run
   * instead of hashing the run's last files again.
   */
  async settle(): Promise<void> {
    const waitMs = Number(this.#newestCtimeNs + RACY_WINDOW_NS - BigInt(Date.now()) * 1_000_000n) / 1e6;
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(waitMs + 1, 25)));
  }

  /** Forgets `path` (deleted, failed, or no longer listed). */
  delete(path: string): void {
    this.#entries.delete(path);
  }

  /** Keeps only the entries whose path `keep` accepts: files the server no longer lists are forgotten. */
  retain(keep: (path: string) => boolean): void {
    for (const path of this.#entries.keys()) if (!keep(path)) this.#entries.delete(path);
  }

  /** The state as the text of its file. */
  format(): string {
    const lines = [STATE_HEADER];
    for (const [path, e] of this.#entries) {
      lines.push(
        `${e.size}\t${e.mtimeNs}\t${e.ctimeNs}\t${e.ino}\t${e.sha256}\t${e.etag}\t${JSON.stringify(path)}`,
      );
    }
    return lines.join("\n") + "\n";
  }

  /**
   * Reads a state file's text, written at `writtenAtNs` (its mtime). Lines that do not parse are skipped
   * (their files are hashed); a file that is not a state file at all gives an empty state. Never throws.
   */
  static parse(text: string, writtenAtNs: bigint): MirrorState {
    const state = new MirrorState(writtenAtNs);
    const lines = text.split("\n");
    if (lines[0] !== STATE_HEADER) return state;
    for (let i = 1; i < lines.length; i++) {
      const parsed = parseLine(lines[i]);
      if (parsed !== null) state.#entries.set(parsed[0], parsed[1]);
    }
    return state;
  }
}

const DECIMAL = /^(0|[1-9][0-9]{0,19})$/;
const ETAG = /^[A-Za-z0-9_-]{0,128}$/;

/** One line of a state file, or null if it is not a well-formed entry. */
function parseLine(line: string): [string, StateEntry] | null {
  const fields = line.split("\t");
  if (fields.length < 7) return null;
  const [size, mtimeNs, ctimeNs, ino, sha256, etag] = fields;
  // The path is the rest of the line: a JSON string may hold tabs.
  const quoted = fields.slice(6).join("\t");
  if (![size, mtimeNs, ctimeNs, ino].every((f) => DECIMAL.test(f))) return null;
  if (!isSha256Hex(sha256) || !ETAG.test(etag)) return null;
  let path: unknown;
  try {
    path = JSON.parse(quoted);
  } catch {
    return null;
  }
  if (typeof path !== "string" || path === "" || !Number.isSafeInteger(Number(size))) return null;
  return [path, {
    size: Number(size),
    mtimeNs: BigInt(mtimeNs),
    ctimeNs: BigInt(ctimeNs),
    ino: BigInt(ino),
    sha256,
    etag,
  }];
}

/** The folder in LOCAL_DIR that holds the state; `mirror` neither lists into it nor deletes in it. */
export const STATE_DIR = ".ferry";
const STATE_FILE = "state";
const STATE_TEMP = "state.tmp";

/**
 * Loads LOCAL_DIR's state. A state that is missing, unreadable, or not a regular file (a symlink planted
 * there is not followed) is an empty one: the run then hashes what it finds.
 */
export function loadState(root: LocalDir): MirrorState {
  let fd: number;
  try {
    fd = openAt(root.fd, `${STATE_DIR}/${STATE_FILE}`, OPEN.O_RDONLY | C.O_NONBLOCK, { noSymlinks: true });
  } catch {
    return new MirrorState();
  }
  try {
    const stat = fstat(fd);
    if (!stat.isFile) return new MirrorState();
    const bytes = new Uint8Array(stat.size);
    for (let got = 0; got < bytes.length;) {
      const n = pread(fd, bytes.subarray(got), got);
      if (n <= 0) break;
      got += n;
    }
    return MirrorState.parse(new TextDecoder().decode(bytes), stat.mtimeNs);
  } catch {
    return new MirrorState();
  } finally {
    close(fd);
  }
}

/**
 * Writes LOCAL_DIR's state: a temporary file, renamed over the old state, so a reader sees the old or the
 * new one whole. It is not fsynced: a state lost in a crash costs the next run some hashing, no more.
 * Throws LocalIoError.
 */
export function saveState(root: LocalDir, state: MirrorState): void {
  const shown = root.shownPath(`${STATE_DIR}/${STATE_FILE}`);
  try {
    try {
      mkdirAt(root.fd, STATE_DIR, 0o755);
    } catch (e) {
      if (!(e instanceof LibcError) || e.errnoName !== "EEXIST") throw e;
    }
    using dir = LocalDir.adopt(
      openAt(root.fd, STATE_DIR, OPEN.O_RDONLY | OPEN.O_DIRECTORY, { noSymlinks: true }),
      "",
    );
    try {
      unlinkAt(dir.fd, STATE_TEMP); // a leftover, or a symlink someone planted: never written through
    } catch { /* none */ }
    const fd = openAt(dir.fd, STATE_TEMP, OPEN.O_WRONLY | OPEN.O_CREAT | OPEN.O_EXCL, {
      mode: 0o600,
      noSymlinks: true,
    });
    try {
      pwriteAll(fd, new TextEncoder().encode(state.format()), 0);
    } finally {
      close(fd);
    }
    renameAt(dir.fd, STATE_TEMP, dir.fd, STATE_FILE);
  } catch (e) {
    throw new LocalIoError(`cannot write ${shown}`, e);
  }
}
