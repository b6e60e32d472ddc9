/**
 * Delta transfer seen from the client (PROTOCOL.md "Delta transfer"): for a file whose old copy is here
 * and whose version on the server differs, ask for the version's signature (`sig`, unless it was asked for
 * ahead: `signature_prefetch.ts`), find its chunks in the old copy (`delta.ts`: cut the same way while the
 * server signs, or followed through it when the signature is in hand), and fetch only the byte ranges it
 * lacks (`get` with `ranges`, as few requests as {@link MAX_RANGES} allows). The new version is built in
 * order in the part, copied pieces from the old copy and fetched ones as they arrive, so the part is always
 * the start of that version, named by its etag: an interrupted build resumes like any part.
 * `fetch_file.ts` then checks the whole SHA-256 and publishes as for a whole-file get.
 *
 * A malformed signature or answer is a protocol error (exit 6, nothing published); a refusal (an older
 * server's UNKNOWN_OP, CHANGED when the file moved on, FILE_CHANGED) makes the caller fetch the whole file.
 *
 * @module
 */

import {
  chunkBitsFor,
  type ChunkIndex,
  decodeSignature,
  type DeltaStep,
  findChunks,
  indexChunks,
  maxSignatureLength,
  planDelta,
  type Signature,
  SignatureBuilder,
  SignatureError,
} from "../delta.ts";
import {
  MAX_RANGES,
  PROTOCOL_VERSION,
  type Request,
  type ResponseHeader,
  SIGNATURE_HEADER_SIZE,
} from "../framing.ts";
import type { Deadline } from "./deadline.ts";
import { protocolError, ServerRefusal } from "./failure.ts";
import type { Progress } from "./progress.ts";
import { LocalIoError } from "./publish.ts";
import type { Session } from "./session.ts";
import type { Prefetched } from "./signature_prefetch.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/**
 * Smallest old copy worth a delta: below 1 MiB the whole file crosses a LAN in about a millisecond, less
 * than the extra round trip of `sig` plus reading and cutting the old copy, and a signature of 4 KiB
 * chunks would be a sizeable share of the file.
 */
export const DELTA_MIN_BYTES = 1024 * 1024;

/**
 * Smallest old copy whose first bytes are guessed into the part while the server signs the version
 * ({@link PrefixGuess}): the server signs a smaller file before the guess gets far, and a guess that runs
 * past the first change is work thrown away (tree (a)'s 20 MiB files: 0.43 s against 0.41 s with it).
 */
export const GUESS_MIN_BYTES = 64 * 1024 * 1024;

/** True when an old copy of `localSize` bytes and a version of `remoteSize` are both worth a delta. */
export function worthDelta(localSize: number, remoteSize: number): boolean {
  return localSize >= DELTA_MIN_BYTES && remoteSize >= DELTA_MIN_BYTES;
}

/** The `sig` request for `path`, offering the old copy's SHA-256 (when known) as `ifNoneMatch`. */
export function signatureRequest(path: string, localSha256: string | undefined): Request {
  const request: Request = { v: PROTOCOL_VERSION, op: "sig", path };
  if (localSha256 !== undefined) request.ifNoneMatch = localSha256;
  return request;
}

/** A `get` header as `fetch_file.ts` checks it: what a delta needs of it. */
export interface DeltaHeader {
  /** The whole file's size. */
  size: number;
  /** Where the data starts (0 for a delta). */
  offset: number;
  /** The version. */
  etag?: string;
  /** The whole file's SHA-256, if announced before the data. */
  sha256?: string;
  /** True for an answer to `ifNoneMatch` that matched. */
  unchanged: boolean;
}

/** Where the new version is built: the part of `fetch_file.ts`'s file holder. */
export interface DeltaTarget<H extends DeltaHeader> {
  /** Makes ready to receive the version of `header` from byte 0. */
  accept(header: H): Promise<void>;
  /** Appends bytes of the new version. */
  write(chunk: Uint8Array): Promise<void>;
  /** Forgets what was built. */
  discard(): Promise<boolean>;
  /**
   * Starts a part named for no version, for bytes that may begin the new version (written meanwhile with
   * {@link write}); false if it cannot (it holds bytes already).
   */
  startGuess(): Promise<boolean>;
  /**
   * The first `upTo` bytes written since {@link startGuess} begin the version of `header`: keeps them (or
   * fewer: as many as it can) and forgets the rest. Returns the bytes kept, after which the build goes on;
   * 0 when none are (the part is then to be discarded).
   */
  keepGuess(header: H, upTo: number): Promise<number>;
}

/** What the delta needs from the fetch. */
export interface DeltaContext<H extends DeltaHeader> {
  session: Session;
  /** The path on the server. */
  path: string;
  /** The old copy, open for reading; the caller closes it. */
  old: Deno.FsFile;
  /** The new version's size if the caller knows it (mirror's listing): the old copy is cut for that size. */
  expectedSize?: number;
  /** The old copy's SHA-256, if it was computed: the server answers `unchanged` if it is the version's. */
  localSha256?: string;
  /** Checks a header the way a whole-file get does. */
  checkHeader: (header: ResponseHeader) => H;
  target: DeltaTarget<H>;
  deadline: Deadline;
  progress: Progress;
  /** Told of each data byte received (signature and ranges). */
  onReceived: (bytes: number) => void;
  /** The version's signature asked for ahead (`signature_prefetch.ts`), if it was. */
  early?: Prefetched;
  /**
   * The old copy's signature as `mirror` kept it (`signature_store.ts`), for a copy the state vouches
   * for: the delta is planned from it, without reading the old copy before the build.
   */
  oldSignature?: Signature;
}

/** How a delta ended; null from {@link fetchDelta} means: fetch the whole file instead. */
export interface DeltaResult<H extends DeltaHeader> {
  /** The version's header (from `sig`), with offset 0. */
  header: H;
  /** The whole file's SHA-256 as the server announced it, for the caller to check. */
  sha256?: string;
  /** Bytes copied from the old copy. */
  reused: number;
  /** The version's signature as the server encoded it (absent when the copy was current). */
  signature?: Uint8Array;
  /** True when the plan came from {@link DeltaContext.oldSignature}. */
  plannedFromKept: boolean;
}

/**
 * Fetches `ctx.path` by delta into `ctx.target`. Returns the version's header and SHA-256 (the target
 * then holds the whole new version, unverified), or null when the server refused a step (fall back to a
 * whole-file get; nothing is kept). Throws a protocol error for a malformed answer; a lost connection
 * propagates, leaving a resumable part.
 */
export async function fetchDelta<H extends DeltaHeader>(
  ctx: DeltaContext<H>,
): Promise<DeltaResult<H> | null> {
  const { session, path, target } = ctx;
  const what = JSON.stringify(path);
  // The old copy is cut while the server signs its version (each on its own core), until the signature
  // comes: following it through the old copy costs less than cutting what is left (see signOldCopy). The
  // cut needs the version's chunk size, known from its size.
  const oldSize = ctx.old.statSync().size;
  const bits = chunkBitsFor(ctx.expectedSize ?? oldSize);
  const kept = ctx.oldSignature?.bits === bits && ctx.oldSignature.size === oldSize ? ctx.oldSignature : null;
  let local: Signature | null = kept;
  // Asked with another copy's hash, an early answer holds for a copy of no known hash unless "unchanged".
  const earlyAsked = ctx.early?.ifNoneMatch;
  const early = earlyAsked === ctx.localSha256 || ctx.localSha256 === undefined ? ctx.early : undefined;
  if (local === null && early !== undefined && !early.ready) {
    local = await signOldCopy(ctx.old, oldSize, bits, ctx.deadline, () => early.ready);
  }
  // Planned from a kept signature, the old copy is not read before the plan: it is guessed into the part.
  const guess = new PrefixGuess(
    ctx,
    kept === null || ctx.expectedSize === undefined || oldSize < GUESS_MIN_BYTES
      ? 0
      : Math.min(oldSize, ctx.expectedSize),
  );
  try {
    if (early !== undefined) await guess.makeWhile(() => !early.ready);
    let answer = early === undefined ? null : await early.answer;
    if (answer?.header.unchanged === true && earlyAsked !== ctx.localSha256) answer = null;
    let raw: ResponseHeader;
    if (answer !== null) raw = answer.header;
    else {
      let answered = false;
      const asked = session.begin(signatureRequest(path, ctx.localSha256), what);
      // Settled while the old copy is cut; its outcome is taken after the cut.
      asked.then(() => answered = true, () => answered = true);
      if (local === null) local = await signOldCopy(ctx.old, oldSize, bits, ctx.deadline, () => answered);
      else await guess.makeWhile(() => !answered);
      try {
        raw = await asked;
      } catch (e) {
        if (!(e instanceof ServerRefusal)) throw e;
        await guess.drop();
        return null;
      }
    }
    const header = ctx.checkHeader(raw);
    if (header.unchanged) {
      await guess.drop();
      if (answer === null) await session.finish();
      return {
        header,
        sha256: header.sha256 ?? ctx.localSha256,
        reused: header.size,
        plannedFromKept: false,
      };
    }
    if (header.etag === undefined) throw protocolError(`the signature of ${what} names no version (etag)`);
    let signature: Uint8Array;
    if (answer?.bytes) signature = answer.bytes;
    else {
      signature = await readSignatureBytes(
        session,
        `the signature of ${what}`,
        raw.signatureLength,
        header.size,
      );
    }
    ctx.onReceived(signature.byteLength);
    const remote = decodeFromWire(signature, header.size, what);
    const plannedFromKept = kept !== null && kept.bits === remote.bits;
    const have: ChunkIndex = local !== null && local.bits === remote.bits
      ? indexChunks(local)
      : findChunks(remote, oldSize, (buffer, offset) => {
        ctx.deadline.check();
        ctx.old.seekSync(offset, Deno.SeekMode.Start);
        return ctx.old.readSync(buffer) ?? 0;
      });
    const plan = planDelta(remote, have);
    const held = await guess.settle({ ...header, offset: 0 }, plan.steps);
    const builder = new Builder(ctx, stepsAfter(plan.steps, held));
    ctx.progress.start(path, header.size, held);
    let sha256 = header.sha256;
    try {
      await builder.copyUntilFetch();
      for (let first = 0; first < plan.ranges.length; first += MAX_RANGES) {
        const ranges = plan.ranges.slice(first, first + MAX_RANGES);
        const fetched = await fetchRanges(ctx, header, ranges, builder);
        if (fetched === null) {
          await target.discard();
          return null;
        }
        sha256 ??= fetched;
      }
    } finally {
      ctx.progress.end();
    }
    if (!builder.done) throw protocolError(`the ranges of ${what} did not build the whole file`);
    return { header, sha256, reused: plan.reusedBytes, signature, plannedFromKept };
  } catch (e) {
    await guess.drop();
    throw e;
  }
}

/**
 * The old copy written into the part from its first byte while the server signs the version, for a delta
 * planned from a kept signature (which need not read the copy before its plan): the cores would otherwise
 * wait on each other. The version keeps the bytes it begins with as the copy does (all of them for a file
 * appended to, those before the first change for a file changed in place or by an insertion), hashed
 * already; the build goes on after them.
 */
class PrefixGuess<H extends DeltaHeader> {
  /** Bytes written into the part of the guess. */
  #bytes = 0;
  /** True while the target holds a part of the guess, not settled yet. */
  #open = false;

  /** @param limit bytes to guess at most: the copy's size or the version's, whichever is smaller; 0, none */
  constructor(readonly ctx: DeltaContext<H>, readonly limit: number) {}

  /** Writes the copy into a part of its own, in 1 MiB pieces, while `waiting()` says so. */
  async makeWhile(waiting: () => boolean): Promise<void> {
    const { old, target, deadline } = this.ctx;
    if (this.limit <= 0 || !waiting() || !await target.startGuess()) return;
    this.#open = true;
    const buffer = pageAlignedBuffer(1024 * 1024);
    await old.seek(0, Deno.SeekMode.Start);
    // Each read lets the event loop run, so that an answer that came meanwhile is seen.
    while (this.#bytes < this.limit && waiting()) {
      deadline.check();
      const n = await old.read(buffer.subarray(0, Math.min(buffer.byteLength, this.limit - this.#bytes)));
      if (n === null) break;
      await target.write(buffer.subarray(0, n));
      this.#bytes += n;
    }
  }

  /**
   * Makes the target ready to build the version of `header` by `steps`: with the bytes guessed that the
   * steps copy from the same offsets of the copy, else from byte 0. Returns the bytes kept.
   */
  async settle(header: H, steps: readonly DeltaStep[]): Promise<number> {
    if (!this.#open) {
      await this.ctx.target.accept(header);
      return 0;
    }
    const held = await this.ctx.target.keepGuess(header, Math.min(this.#bytes, copiedInPlace(steps)));
    if (held > 0) {
      this.#open = false;
      return held;
    }
    await this.drop();
    await this.ctx.target.accept(header);
    return 0;
  }

  /** Drops the bytes guessed, if a part holds them. */
  async drop(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    await this.ctx.target.discard();
  }
}

/** How many bytes a plan's first steps copy from the same offsets of the old copy, from byte 0. */
export function copiedInPlace(steps: readonly DeltaStep[]): number {
  let end = 0;
  for (const step of steps) {
    if (step.from !== end || step.offset !== end) break;
    end += step.length;
  }
  return end;
}

/** The steps that build a file's bytes from `start` on (`start` within the steps copied in place). */
export function stepsAfter(steps: readonly DeltaStep[], start: number): DeltaStep[] {
  const after: DeltaStep[] = [];
  for (const step of steps) {
    const end = step.offset + step.length;
    if (end <= start) continue;
    if (step.offset >= start) after.push(step);
    else after.push({ offset: start, length: end - start, from: step.from! + start - step.offset });
  }
  return after;
}

/**
 * Reads the signature that follows a `sig` header on `session` (`length`, the header's
 * `signatureLength`, for a file of `size` bytes), undecoded; `what` names it in errors. An impossible
 * length, or a body of another length, is a protocol error.
 */
export async function readSignatureBytes(
  session: Session,
  what: string,
  length: unknown,
  size: number,
): Promise<Uint8Array> {
  if (
    typeof length !== "number" || !Number.isSafeInteger(length) || length < SIGNATURE_HEADER_SIZE ||
    length > maxSignatureLength(size)
  ) {
    throw protocolError(`${what} has an impossible length ${JSON.stringify(length)}`);
  }
  const bytes = new Uint8Array(length);
  let received = 0;
  const end = await session.readBody(length, (chunk) => {
    bytes.set(chunk, received);
    received += chunk.byteLength;
    return Promise.resolve();
  });
  if (end.received !== length) {
    throw protocolError(`${what} came with ${end.received} of its ${length} bytes`);
  }
  return bytes;
}

/** Decodes a signature received for a file of `size` bytes; a malformed one is a protocol error. */
function decodeFromWire(bytes: Uint8Array, size: number, what: string): Signature {
  try {
    return decodeSignature(bytes, size);
  } catch (e) {
    if (e instanceof SignatureError) throw protocolError(`${what}: ${e.message}`);
    throw e;
  }
}

/**
 * The signature of the old copy (`size` bytes when the delta began) with the server's chunk size, cut from
 * 1 MiB pieces read in turn. Null when `came()` says the server's signature is in hand while less than half
 * of the copy is cut: following the signature through the copy only hashes it, which costs about half as
 * much per byte as cutting it.
 */
async function signOldCopy(
  old: Deno.FsFile,
  size: number,
  bits: number,
  deadline: Deadline,
  came: () => boolean,
): Promise<Signature | null> {
  const builder = new SignatureBuilder(bits);
  const buffer = pageAlignedBuffer(1024 * 1024);
  await old.seek(0, Deno.SeekMode.Start);
  let cut = 0;
  // Each read lets the event loop run, so that an answer that came meanwhile is seen.
  for (let n = await old.read(buffer); n !== null; n = await old.read(buffer)) {
    deadline.check();
    if (cut < size / 2 && came()) return null;
    builder.update(buffer.subarray(0, n));
    cut += n;
  }
  return builder.finish();
}

/**
 * One `get` of up to {@link MAX_RANGES} ranges of the version, fed to the builder as it arrives. Returns
 * the SHA-256 the server announced (header or trailer), or null when the server refused (the version
 * moved on, or changed while it was sent).
 */
async function fetchRanges<H extends DeltaHeader>(
  ctx: DeltaContext<H>,
  version: H,
  ranges: [number, number][],
  builder: Builder<H>,
): Promise<string | null> {
  const what = JSON.stringify(ctx.path);
  let total = 0;
  for (const [, length] of ranges) total += length;
  const request: Request = { v: PROTOCOL_VERSION, op: "get", path: ctx.path, ifMatch: version.etag, ranges };
  try {
    const header = ctx.checkHeader(await ctx.session.begin(request, what));
    if (header.etag !== version.etag || header.size !== version.size) {
      throw protocolError(`the ranges of ${what} came from another version than asked for`);
    }
    const end = await ctx.session.readBody(total, async (chunk) => {
      ctx.onReceived(chunk.byteLength);
      await builder.feed(chunk);
    });
    if (end.received !== total) {
      throw protocolError(`${what} sent ${end.received} of the ${total} bytes asked for`);
    }
    const sha256 = header.sha256 ?? end.sha256;
    if (sha256 === undefined) throw protocolError(`the ranges of ${what} came without the file's SHA-256`);
    return sha256;
  } catch (e) {
    if (e instanceof ServerRefusal) return null;
    throw e;
  }
}

/**
 * Writes the new version in order: each fetched step from the bytes as they arrive, and after it the
 * copied steps up to the next fetched one, read from the old copy.
 */
class Builder<H extends DeltaHeader> {
  #step = 0;
  /** Bytes of the current fetched step already written. */
  #within = 0;
  readonly #buffer = pageAlignedBuffer(1024 * 1024);

  constructor(
    readonly ctx: DeltaContext<H>,
    readonly steps: { offset: number; length: number; from: number | null }[],
  ) {}

  /** True once every step is written. */
  get done(): boolean {
    return this.#step === this.steps.length;
  }

  /** Copies the old copy's steps from here up to the next fetched one. */
  async copyUntilFetch(): Promise<void> {
    const { old, target, deadline, progress } = this.ctx;
    for (; this.#step < this.steps.length && this.steps[this.#step].from !== null; this.#step++) {
      const { from, length } = this.steps[this.#step];
      old.seekSync(from!, Deno.SeekMode.Start);
      for (let left = length; left > 0;) {
        deadline.check();
        const n = old.readSync(this.#buffer.subarray(0, Math.min(left, this.#buffer.byteLength)));
        if (n === null) {
          throw new LocalIoError(
            "cannot read the local copy",
            `it ended before byte ${from! + length}: it changed meanwhile`,
          );
        }
        await target.write(this.#buffer.subarray(0, n));
        progress.advance(n);
        left -= n;
      }
    }
  }

  /** Writes fetched bytes into the steps that wait for them. */
  async feed(chunk: Uint8Array): Promise<void> {
    while (chunk.byteLength > 0) {
      const step = this.steps[this.#step];
      if (step === undefined || step.from !== null) {
        throw protocolError("more bytes came than were asked for");
      }
      const n = Math.min(step.length - this.#within, chunk.byteLength);
      await this.ctx.target.write(chunk.subarray(0, n));
      this.ctx.progress.advance(n);
      chunk = chunk.subarray(n);
      this.#within += n;
      if (this.#within === step.length) {
        this.#step++;
        this.#within = 0;
        await this.copyUntilFetch();
      }
    }
  }
}
