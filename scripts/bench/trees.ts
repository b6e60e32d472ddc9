/**
 * Case 8's trees and their edits, generated deterministically: every byte comes from a xorshift stream
 * seeded by a label (the tree, the file and the edit), so two runs of the benchmark mirror the same bytes
 * and no block of a file repeats (a repeating pattern would let rsync's delta algorithm match blocks that
 * real data would not have, and crowd its block hash table).
 *
 * @module
 */

import { join } from "node:path";

/** The shape of one tree. */
export interface TreeSpec {
  /** "a", "b" or "c": the directory under the served root and the name in the report. */
  key: string;
  /** Small files, spread over `folders` folders. */
  files: number;
  /** Folders holding the small files. */
  folders: number;
  /** Smallest small file, bytes. */
  minBytes: number;
  /** Largest small file, bytes. */
  maxBytes: number;
  /** Large files at the top of the tree. */
  large: number;
  /** Bytes of each large file. */
  largeBytes: number;
}

/** Bytes of a tree's files together. */
export function treeBytes(root: string): number {
  let total = 0;
  for (const entry of Deno.readDirSync(root)) {
    const path = join(root, entry.name);
    total += entry.isDirectory ? treeBytes(path) : Deno.statSync(path).size;
  }
  return total;
}

/** A tree's description for the report, e.g. "5,000 files of 4-64 KiB in 50 folders, 5 of 20 MiB". */
export function describeTree(t: TreeSpec): string {
  const size = (n: number) =>
    n >= 2 ** 30 ? `${n / 2 ** 30} GiB` : n >= 2 ** 20 ? `${n / 2 ** 20} MiB` : `${n / 1024} KiB`;
  const parts: string[] = [];
  if (t.files > 0) {
    parts.push(
      `${t.files.toLocaleString("en-US")} files of ${size(t.minBytes)}-${
        size(t.maxBytes)
      } in ${t.folders} folders`,
    );
  }
  if (t.large > 0) parts.push(`${t.large === 1 ? "one file" : `${t.large} files`} of ${size(t.largeBytes)}`);
  return parts.join(" plus ");
}

/** A xorshift32 stream of bytes, seeded by a label. */
class Noise {
  #state: number;
  constructor(label: string) {
    let h = 0x811c9dc5; // FNV-1a of the label: a different stream per file and per edit
    for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
    this.#state = (h >>> 0) || 1;
  }
  /** The next 32-bit number. */
  next(): number {
    let s = this.#state;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return this.#state = s >>> 0;
  }
  /** `n` fresh bytes. */
  bytes(n: number): Uint8Array {
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) words[i] = this.next();
    return new Uint8Array(words.buffer, 0, n);
  }
}

const CHUNK = 1 << 20;

/** Writes `bytes` bytes of the stream named `label` to `path`. */
async function writeNoise(path: string, bytes: number, label: string): Promise<void> {
  const noise = new Noise(label);
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let left = bytes; left > 0; left -= CHUNK) {
    const chunk = noise.bytes(Math.min(left, CHUNK));
    for (let done = 0; done < chunk.length;) done += await file.write(chunk.subarray(done));
  }
}

/** Path of small file `i`, relative to the tree. */
function smallPath(t: TreeSpec, i: number): string {
  const pad = (n: number, w: number) => String(n).padStart(w, "0");
  return `d${pad(i % t.folders, 4)}/f${pad(i, 6)}.bin`;
}

/** Size of small file `i` (fixed per tree and file). */
function smallSize(t: TreeSpec, i: number): number {
  return t.minBytes + (new Noise(`${t.key}/size/${i}`).next() % (t.maxBytes - t.minBytes + 1));
}

/** Path of large file `i`, relative to the tree. */
const largePath = (i: number) => `large-${i}.bin`;

/** Runs `jobs` with at most `width` at a time. */
async function inParallel(count: number, width: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, count) }, async () => {
    while (next < count) await job(next++);
  }));
}

/** Creates tree `t` in `dir` (which must not exist yet). */
export async function makeTree(dir: string, t: TreeSpec): Promise<void> {
  for (let f = 0; f < Math.min(t.folders, t.files); f++) {
    await Deno.mkdir(join(dir, smallPath(t, f), ".."), { recursive: true });
  }
  await Deno.mkdir(dir, { recursive: true });
  await inParallel(
    t.files,
    8,
    (i) => writeNoise(join(dir, smallPath(t, i)), smallSize(t, i), `${t.key}/${i}`),
  );
  for (let i = 0; i < t.large; i++) {
    await writeNoise(join(dir, largePath(i)), t.largeBytes, `${t.key}/large/${i}`);
  }
}

/** Rewrites `path` as its first `at` bytes, then `insert`, then the rest (through a file beside it). */
async function insertAt(path: string, at: number, insert: Uint8Array): Promise<void> {
  const temp = `${path}.edit`;
  {
    using from = await Deno.open(path, { read: true });
    using to = await Deno.open(temp, { write: true, create: true, truncate: true });
    const buffer = new Uint8Array(CHUNK);
    let copied = 0;
    const write = async (b: Uint8Array) => {
      for (let done = 0; done < b.length;) done += await to.write(b.subarray(done));
    };
    for (;;) {
      const want = copied < at ? Math.min(CHUNK, at - copied) : CHUNK;
      const n = await from.read(buffer.subarray(0, want));
      if (n === null) break;
      await write(buffer.subarray(0, n));
      copied += n;
      if (copied === at) await write(insert);
    }
  }
  await Deno.rename(temp, path);
}

/** Overwrites `bytes.length` bytes of `path` at `at`. */
async function overwriteAt(path: string, at: number, bytes: Uint8Array): Promise<void> {
  using file = await Deno.open(path, { write: true });
  await file.seek(at, Deno.SeekMode.Start);
  for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
}

/** One round of a tree: its name, and the edit made to the source before it (none for the first two). */
export interface Round {
  /** How the report's tables name it. */
  name: string;
  /** What the edit changes, for the report's text. */
  detail?: string;
  /**
   * Applies the round's edit to the tree in `dir`: the same kind of change each time, to other bytes (and
   * another file deleted) for each `pass`, from 0, so that a round can be edited and measured again.
   */
  edit?: (dir: string, pass: number) => Promise<void>;
}

/** The seed label of pass `pass` of an edit labelled `tag`: the tag itself for the first. */
const passTag = (tag: string, pass: number) => pass === 0 ? tag : `${tag} #${pass + 1}`;

/** How much the edit rounds change. */
export interface EditSizes {
  /** Small files rewritten in tree (a). */
  rewrite: number;
  /** Bytes appended and inserted into large files. */
  insert: number;
}

/**
 * The rounds of tree `t`: a first copy, nothing changed, then its edits. A tree with small and large
 * files gets the mixed edit; one with only small files has 1% of them rewritten; a single large file is
 * changed in place by 4 KiB, then has bytes inserted at one third.
 */
export function roundsOf(t: TreeSpec, sizes: EditSizes): Round[] {
  const rounds: Round[] = [{ name: "first copy" }, { name: "nothing changed" }];
  const rewrite = (dir: string, indices: number[], tag: string) => rewriteSmall(t, dir, indices, tag);
  if (t.files > 0 && t.large >= 3) {
    rounds.push(mixedEdit(t, sizes, "edit", 1));
  } else if (t.files > 0) {
    const count = Math.max(1, Math.round(t.files / 100));
    const every = Math.floor(t.files / count);
    rounds.push({
      name: "edit",
      detail: `1% of the files (${count.toLocaleString("en-US")}) rewritten`,
      edit: (dir, pass) =>
        rewrite(dir, Array.from({ length: count }, (_, k) => k * every), passTag("edit", pass)),
    });
  } else {
    const noise = new Noise(`${t.key}/edit`);
    rounds.push({
      name: "edit 1",
      detail: "4 KiB overwritten in the middle",
      edit: (dir) =>
        overwriteAt(join(dir, largePath(0)), Math.floor(t.largeBytes / 2) + 1234, noise.bytes(4096)),
    }, {
      name: "edit 2",
      detail: `${mib(sizes.insert)} inserted at one third`,
      edit: (dir) =>
        insertAt(join(dir, largePath(0)), Math.floor(t.largeBytes / 3), noise.bytes(sizes.insert)),
    });
  }
  return rounds;
}

/** Rewrites the small files `indices` of tree `t` in `dir` with new content (`tag` seeds it). */
async function rewriteSmall(t: TreeSpec, dir: string, indices: number[], tag: string): Promise<void> {
  await inParallel(indices.length, 8, (k) => {
    const i = indices[k];
    return writeNoise(join(dir, smallPath(t, i)), smallSize(t, i), `${t.key}/${tag}/${i}`);
  });
}

const mib = (n: number) => n >= 2 ** 20 ? `${n / 2 ** 20} MiB` : `${n / 1024} KiB`;

/**
 * The edit of a tree of small and large files (at least three): `sizes.rewrite` small files rewritten,
 * bytes appended to one large file, 4 KiB changed in another, bytes inserted in the middle of a third, and
 * the small file `deleted` removed. `tag` seeds the new content, so that another tag makes another edit.
 * Each later pass rewrites the same small files and large ones with other bytes, and removes the small file
 * `deleted` + pass * (files / rewrite), which is never one of those rewritten.
 */
export function mixedEdit(t: TreeSpec, sizes: EditSizes, tag: string, deleted: number): Round {
  const every = Math.floor(t.files / sizes.rewrite);
  const picked = Array.from({ length: sizes.rewrite }, (_, k) => k * every);
  return {
    name: tag,
    detail: `${sizes.rewrite} files rewritten, ${mib(sizes.insert)} appended to one large file, ` +
      `4 KiB changed in another, ${mib(sizes.insert)} inserted in the middle of a third, one file deleted`,
    edit: async (dir, pass) => {
      await rewriteSmall(t, dir, picked, passTag(tag, pass));
      const noise = new Noise(`${t.key}/${passTag(tag, pass)}/large`);
      using tail = await Deno.open(join(dir, largePath(0)), { append: true });
      const appended = noise.bytes(sizes.insert);
      for (let done = 0; done < appended.length;) done += await tail.write(appended.subarray(done));
      await overwriteAt(join(dir, largePath(1)), Math.floor(t.largeBytes / 2) + 1234, noise.bytes(4096));
      await insertAt(join(dir, largePath(2)), Math.floor(t.largeBytes / 2), noise.bytes(sizes.insert));
      await Deno.remove(join(dir, smallPath(t, deleted + pass * every)));
    },
  };
}
