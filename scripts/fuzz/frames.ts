/**
 * What the fuzzer sends: frames (valid requests of every operation of PROTOCOL.md, requests with mutated
 * fields, bad JSON, wrong type bytes, lengths negative, too large or not matching the body, random and
 * foreign bytes) and, around them, connection plans: how many frames a connection carries, how they are cut
 * into writes (one burst, one write per frame, or split anywhere, even inside a length), and how the
 * connection ends (half-close, an end frame, cut mid-frame, cut mid-answer). Everything comes from a seeded
 * {@link Random}, so a plan is a function of the seed and its index.
 *
 * @module
 */

import {
  encodeJsonFrame,
  encodeRawFrame,
  END_FRAME,
  FRAME_HEADER_SIZE,
  FrameType,
  MAX_RANGES,
  MAX_REQUEST_FRAME,
  PROTOCOL_VERSION,
  putFrameLength,
} from "../../framing.ts";
import type { Random } from "./random.ts";

/** A fixture file as the generator knows it: enough to write valid requests for it. */
export interface FuzzFile {
  /** Path in the served root. */
  path: string;
  /** Size in bytes. */
  size: number;
  /** SHA-256, hex. */
  sha256: string;
  /** The etag the server gave it (for `ifMatch`). */
  etag: string;
}

/** Paths that name no regular file the server may serve: missing, folders, links out, malformed. */
const ODD_PATHS = [
  "nope",
  "dir",
  "dir/",
  "dir//a.txt",
  "./tiny.txt",
  ".",
  "out",
  "updir/etc/passwd",
  "dangling",
  "loop",
  "inside",
  "/etc/passwd",
  "../x",
  "a/../tiny.txt",
  "..",
  "dir/..",
  "%2e%2e/x",
  "tiny.txt\u0000",
  "\u0000",
  "\ud800",
  "ü-名",
  "x".repeat(4097),
  "a/".repeat(2100),
  "proc/self/root",
  "tiny.txt/",
  "",
];

/** Folders a `list` may name. */
const LIST_PATHS = ["", "dir", "dir/sub"];

/** JSON values of every type and awkward size, to put where a field expects something else. */
const ODD_VALUES: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  2 ** 53,
  -(2 ** 53),
  1e308,
  "",
  "x",
  "1",
  "get",
  [],
  [1, 2],
  [[0, 1]],
  {},
  { a: 1 },
  "\u0000",
  "\ud800",
  "z".repeat(3000),
];

/** Field names of a request, and some it does not have. */
const FIELDS = [
  "v",
  "op",
  "path",
  "offset",
  "ifMatch",
  "ifNoneMatch",
  "recursive",
  "stream",
  "folders",
  "ranges",
  "__proto__",
  "constructor",
  "toString",
  "pad",
  "",
];

/** Bytes of other protocols that might reach a ferry port. */
const FOREIGN = [
  "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
  "POST /ferry HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
  "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
  "SSH-2.0-OpenSSH_9.6\r\n",
  "PROXY TCP4 192.0.2.1 192.0.2.2 1234 7420\r\n",
  "\r\n\r\nQUIT\r\n",
].map((s) => Uint8Array.from(s, (c) => c.charCodeAt(0)));

/** A frame of a plan, and whether it is a valid request whose answer leaves the connection open. */
export interface PlannedFrame {
  /** The bytes on the wire. */
  bytes: Uint8Array;
  /** True for a valid request the server must answer without closing. */
  sure: boolean;
}

/** How a connection ends once its frames are written. */
export type Ending = "half-close" | "end-frame" | "cut" | "cut-answer";

/** One connection of the fuzzer. */
export interface ConnectionPlan {
  /** Its index in the run (with the seed, all that is needed to make it again). */
  index: number;
  /** What kind of connection it is, for the report. */
  kind: string;
  /** The writes, in order. */
  chunks: Uint8Array[];
  /** Frames in it (an end frame, a cut frame and a blob of random bytes count one each). */
  frames: number;
  /** Leading frames that are valid requests leaving the connection open: each must be answered. */
  sure: number;
  /** How it ends. */
  ending: Ending;
  /** For `cut-answer`: bytes of the answer read before the connection is closed. */
  readBeforeCut: number;
}

/** A Request frame carrying `json` as its body, whatever the text is. */
function requestFrame(json: string): Uint8Array {
  const body = new TextEncoder().encode(json);
  const payload = new Uint8Array(1 + body.byteLength);
  payload[0] = FrameType.Request;
  payload.set(body, 1);
  return encodeRawFrame(payload);
}

/** A valid request, for a random operation and file, that the server answers and stays open after. */
function validRequest(rng: Random, files: readonly FuzzFile[]): Record<string, unknown> {
  const file = rng.chance(0.7) ? rng.pick(files.filter((f) => f.size <= 64 * 1024)) : rng.pick(files);
  const path = rng.chance(0.85) ? file.path : rng.pick(["nope", "dir", "out", "dangling", "../x", "/etc"]);
  const v = PROTOCOL_VERSION;
  switch (rng.int(7)) {
    case 0:
      return { v, op: "ping" };
    case 1:
      return { v, op: "stat", path };
    case 2:
      return {
        v,
        op: "list",
        path: rng.pick(LIST_PATHS),
        recursive: rng.chance(0.5),
        stream: rng.chance(0.5),
        folders: rng.chance(0.5),
      };
    case 3:
      return rng.chance(0.5) ? { v, op: "sig", path } : { v, op: "sig", path, ifNoneMatch: file.sha256 };
    case 4: { // ranges of the version the client holds, or of one it no longer does (CHANGED)
      const ranges: [number, number][] = [];
      for (let at = rng.int(64); at < file.size && ranges.length < 20; at += rng.between(1, 9000)) {
        const length = rng.between(1, Math.min(5000, file.size - at));
        ranges.push([at, length]);
        at += length;
      }
      if (ranges.length === 0) return { v, op: "get", path: file.path };
      return { v, op: "get", path: file.path, ifMatch: rng.chance(0.8) ? file.etag : "stale", ranges };
    }
    default: {
      const request: Record<string, unknown> = { v, op: "get", path };
      // A large file only from near its end: whole, it would make the run a bandwidth test.
      if (file.size > 64 * 1024) request.offset = file.size - rng.int(64 * 1024);
      else if (rng.chance(0.3)) request.offset = rng.int(file.size + 1);
      else if (rng.chance(0.2)) request.ifNoneMatch = rng.chance(0.5) ? file.sha256 : "0".repeat(64);
      if (rng.chance(0.1)) request.unknownField = rng.pick(ODD_VALUES);
      return request;
    }
  }
}

/** A valid request with an odd path or an unknown field: mostly answered with the connection kept. */
function softMutated(rng: Random, files: readonly FuzzFile[]): Uint8Array {
  const request = validRequest(rng, files);
  if (rng.chance(0.6) && request.op !== "ping") request.path = rng.pick(ODD_PATHS);
  else request[`x${rng.int(1000)}`] = rng.pick(ODD_VALUES);
  return encodeJsonFrame(FrameType.Request, request);
}

/** A valid request with one to three fields changed, removed or added. */
function mutatedRequest(rng: Random, files: readonly FuzzFile[]): string {
  const request = validRequest(rng, files);
  for (let n = rng.between(1, 3); n > 0; n--) {
    const field = rng.pick(FIELDS);
    switch (rng.int(5)) {
      case 0:
        delete request[field];
        break;
      case 1:
        request.path = rng.pick(ODD_PATHS);
        break;
      case 2:
        request.ranges = oddRanges(rng);
        if (rng.chance(0.7)) request.ifMatch = rng.pick(files).etag;
        break;
      default:
        request[field] = rng.chance(0.2) ? oddVersionOrOp(rng, field) : rng.pick(ODD_VALUES);
    }
  }
  const json = JSON.stringify(request);
  return rng.chance(0.1) ? json.replace("{", `{"v":${rng.pick(["1", "2", "1.0", "-0", "1e0"])},`) : json;
}

function oddVersionOrOp(rng: Random, field: string): unknown {
  return field === "op" || rng.chance(0.5)
    ? rng.pick(["GET", "pin", "ping ", "list\u0000", "sig", "stat", "get", "delete", "__proto__"])
    : rng.pick([0, 2, 99, -1, 1.000001, "1"]);
}

/** `ranges` that break one rule or another: unsorted, overlapping, empty, too many, not integers. */
function oddRanges(rng: Random): unknown {
  switch (rng.int(7)) {
    case 0:
      return [[100, 10], [0, 10]];
    case 1:
      return [[0, 10], [5, 10]];
    case 2:
      return [[0, 0]];
    case 3:
      return Array.from({ length: MAX_RANGES + rng.int(3) }, (_, i) => [i * 2, 1]);
    case 4:
      return [[0, 2 ** 60]];
    case 5:
      return [[rng.int32(), rng.int32()]];
    default:
      return rng.pick(ODD_VALUES);
  }
}

/** JSON that is not a request object: broken, cut short, deeply nested, or another type. */
function badJson(rng: Random, files: readonly FuzzFile[]): string {
  const json = JSON.stringify(validRequest(rng, files));
  switch (rng.int(6)) {
    case 0:
      return json.slice(0, rng.int(json.length));
    case 1:
      return rng.pick(["[]", "1", '"x"', "null", "true", "", " ", "{", "}", '{"v":1,"op":"ping"}}', "{}"]);
    case 2: {
      const depth = rng.between(100, 20_000);
      return "[".repeat(depth) + "]".repeat(rng.chance(0.5) ? depth : 0);
    }
    case 3:
      return `{"v":1,"op":"ping","n":${"9".repeat(rng.between(300, 5000))}}`;
    case 4:
      return `{"v":1,"op":"get","path":"tiny.txt","path":${JSON.stringify(rng.pick(ODD_PATHS))}}`;
    default: { // a character replaced anywhere
      const at = rng.int(json.length);
      return json.slice(0, at) + String.fromCharCode(rng.int(128)) + json.slice(at + 1);
    }
  }
}

/** A frame broken at the byte level: a valid one with bytes flipped, inserted or removed. */
function byteMutated(rng: Random, frame: Uint8Array): Uint8Array {
  const bytes = Array.from(frame);
  for (let n = rng.between(1, 4); n > 0; n--) {
    const at = rng.int(bytes.length);
    switch (rng.int(3)) {
      case 0:
        bytes[at] ^= 1 << rng.int(8);
        break;
      case 1:
        bytes.splice(at, 0, ...rng.bytes(rng.between(1, 8)));
        break;
      default:
        bytes.splice(at, rng.between(1, 8));
    }
  }
  return Uint8Array.from(bytes);
}

/** A frame whose length is negative, too large, or not the length of the body behind it. */
function lengthMutated(rng: Random, frame: Uint8Array): Uint8Array {
  const out = frame.slice();
  const body = frame.byteLength - FRAME_HEADER_SIZE;
  switch (rng.int(5)) {
    case 0:
      putFrameLength(out, 0, -rng.between(1, 2 ** 31));
      break;
    case 1:
      putFrameLength(
        out,
        0,
        rng.pick([MAX_REQUEST_FRAME + 1, 0x7fffffff, rng.between(MAX_REQUEST_FRAME, 2 ** 31 - 1)]),
      );
      break;
    case 2: // shorter: the rest is read as the next frame
      putFrameLength(out, 0, rng.between(1, Math.max(1, body - 1)));
      break;
    case 3: // longer: what follows is read as its body
      putFrameLength(out, 0, body + rng.between(1, 200));
      break;
    default: // a lone type byte, or none at all
      return encodeRawFrame(
        rng.chance(0.5) ? Uint8Array.of(FrameType.Request) : rng.bytes(rng.between(1, 3)),
      );
  }
  return out;
}

/** A ping of exactly {@link MAX_REQUEST_FRAME} bytes: the largest request, which must be served. */
function largestPing(): Uint8Array {
  const bare = `{"v":${PROTOCOL_VERSION},"op":"ping","pad":""}`;
  return requestFrame(bare.replace('""', `"${"p".repeat(MAX_REQUEST_FRAME - 1 - bare.length)}"`));
}
const LARGEST_PING = largestPing();

/**
 * One frame of the fuzzing proper: mostly one the server must refuse (an error, or a close), sometimes an
 * odd one it must serve (the largest request there may be).
 */
export function fuzzFrame(rng: Random, files: readonly FuzzFile[]): PlannedFrame {
  const valid = () => encodeJsonFrame(FrameType.Request, validRequest(rng, files));
  switch (rng.int(9)) {
    case 0:
    case 1:
      return { bytes: requestFrame(mutatedRequest(rng, files)), sure: false };
    case 2:
    case 3:
      return { bytes: requestFrame(badJson(rng, files)), sure: false };
    case 4: { // a frame of another type, or of no known type
      const bytes = valid();
      bytes[FRAME_HEADER_SIZE] = rng.chance(0.5) ? rng.pick(Object.values(FrameType)) : rng.int(256);
      return { bytes, sure: bytes[FRAME_HEADER_SIZE] === FrameType.Request };
    }
    case 5:
      return { bytes: byteMutated(rng, valid()), sure: false };
    case 6:
      return { bytes: lengthMutated(rng, valid()), sure: false };
    case 7:
      return rng.chance(0.5) ? { bytes: LARGEST_PING, sure: true } : { bytes: END_FRAME, sure: false };
    default:
      return { bytes: rng.bytes(rng.between(1, 64)), sure: false };
  }
}

/** Cuts a connection's frames into its writes: one burst, one write per frame, or cut at random offsets. */
function writesOf(rng: Random, frames: Uint8Array[]): Uint8Array[] {
  const all = new Uint8Array(Buffer.concat(frames));
  const how = rng.int(10);
  if (how < 6 || all.byteLength < 2) return [all];
  if (how < 8) return frames;
  const cuts = Array.from({ length: rng.between(1, 8) }, () => rng.between(1, all.byteLength - 1));
  cuts.sort((a, b) => a - b);
  return [0, ...cuts].map((from, i) => all.subarray(from, cuts[i] ?? all.byteLength)).filter((c) => c.length);
}

/** Kinds of connection and how often each comes, in parts of 100. */
const KINDS: readonly [string, number][] = [
  ["requests", 45],
  ["mutated", 35],
  ["cut-frame", 7],
  ["cut-answer", 5],
  ["random", 5],
  ["foreign", 3],
];

function pickKind(rng: Random): string {
  let n = rng.int(100);
  for (const [kind, weight] of KINDS) {
    if (n < weight) return kind;
    n -= weight;
  }
  return KINDS[0][0];
}

/** The plan of connection `index` of a run, from its own generator. */
export function planConnection(rng: Random, index: number, files: readonly FuzzFile[]): ConnectionPlan {
  const kind = pickKind(rng);
  const frames: PlannedFrame[] = [];
  const valid = (n: number) => {
    for (let i = 0; i < n; i++) {
      frames.push({ bytes: encodeJsonFrame(FrameType.Request, validRequest(rng, files)), sure: true });
    }
  };
  let ending: Ending = rng.pick(["half-close", "half-close", "end-frame", "cut"]);
  let readBeforeCut = 0;
  if (kind === "requests") {
    valid(rng.between(0, 10));
    for (let n = rng.between(1, 50); n > 0; n--) {
      if (rng.chance(0.8)) valid(1);
      else frames.push({ bytes: softMutated(rng, files), sure: false });
    }
    if (rng.chance(0.3)) frames.push(fuzzFrame(rng, files));
  } else if (kind === "mutated") {
    valid(rng.between(0, 5));
    for (let n = rng.between(1, 4); n > 0; n--) frames.push(fuzzFrame(rng, files));
  } else if (kind === "cut-frame") {
    valid(rng.between(0, 20));
    const whole = encodeJsonFrame(FrameType.Request, validRequest(rng, files));
    frames.push({ bytes: whole.subarray(0, rng.between(1, whole.byteLength - 1)), sure: false });
    ending = rng.pick(["half-close", "cut"]);
  } else if (kind === "cut-answer") {
    const big = files.reduce((a, b) => (b.size > a.size ? b : a));
    for (let n = rng.between(1, 3); n > 0; n--) {
      const request = rng.pick([
        { op: "get", path: big.path },
        { op: "sig", path: big.path },
        { op: "list", path: "", recursive: true, stream: rng.chance(0.5) },
      ]);
      frames.push({
        bytes: encodeJsonFrame(FrameType.Request, { v: PROTOCOL_VERSION, ...request }),
        sure: true,
      });
    }
    ending = "cut-answer";
    readBeforeCut = rng.int(256 * 1024);
  } else {
    frames.push({
      bytes: kind === "random" ? rng.bytes(rng.between(1, 4096)) : rng.pick(FOREIGN),
      sure: false,
    });
    ending = rng.pick(["half-close", "half-close", "cut"]);
  }
  if (ending === "end-frame") frames.push({ bytes: END_FRAME, sure: false });
  const sure = frames.findIndex((f) => !f.sure);
  return {
    index,
    kind,
    chunks: writesOf(rng, frames.map((f) => f.bytes)),
    frames: frames.length,
    sure: sure === -1 ? frames.length : sure,
    ending,
    readBeforeCut,
  };
}
