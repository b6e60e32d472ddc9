/**
 * Unit tests of the wire format: classic-mode framing regenerated from any stream position must equal the
 * seed's naive framing byte for byte, and request parsing accepts and refuses with the right codes.
 */

import assert from "node:assert/strict";
import {
  checkRelativePath,
  CLASSIC_CHUNK,
  classicBodyLength,
  decodeJson,
  encodeErrorResponse,
  encodeRawFrame,
  encodeRequest,
  END_FRAME,
  ERROR_CLOSES,
  errorClosesConnection,
  ErrorCode,
  type ErrorCodeValue,
  FileShrankError,
  fillClassicBody,
  FrameType,
  getFrameLength,
  isSha256Hex,
  MAX_PATH_BYTES,
  parseRequest,
  ProtocolError,
  putFrameLength,
} from "../framing.ts";
import { naiveSeedBody, patterned, repoPath } from "./helpers.ts";

const SIZES = [0, 1, 999, 1000, 1001, 2500];
const encoder = new TextEncoder();

/**
 * A `readAt` over `file` that returns at most `most` bytes per call, like a pread that reads short. It
 * throws when called far more often than one fill can need, so that a fill stuck in a loop fails the test
 * instead of hanging it.
 */
function reader(file: Uint8Array, most = Infinity): (buf: Uint8Array, offset: number) => number {
  let calls = 0;
  return (buf, offset) => {
    if (++calls > 4 * (file.byteLength + 10)) throw new Error(`readAt called ${calls} times: a fill loops`);
    const piece = file.subarray(offset, Math.min(file.byteLength, offset + buf.byteLength, offset + most));
    buf.set(piece);
    return piece.byteLength;
  };
}

/** Reads the whole body from `start` with output buffers of `bufferSize` bytes, concatenated. */
function streamBody(file: Uint8Array, start: number, bufferSize: number, most = Infinity): Uint8Array {
  const total = classicBodyLength(file.byteLength);
  const out = new Uint8Array(total - start);
  const buf = new Uint8Array(bufferSize);
  let pos = start;
  while (pos < total) {
    buf.fill(0xee); // stale bytes must never leak into what is reported filled
    const n = fillClassicBody(buf, pos, file.byteLength, reader(file, most));
    assert.ok(n > 0 && n <= bufferSize, `fill at ${pos} returned ${n}`);
    out.set(buf.subarray(0, n), pos - start);
    pos += n;
  }
  return out;
}

Deno.test("classicBodyLength counts 4 bytes per 1000-byte frame and the end frame", () => {
  assert.equal(CLASSIC_CHUNK, 1000, "the seed's char buf[1000]");
  for (const size of SIZES) assert.equal(classicBodyLength(size), naiveSeedBody(patterned(size)).byteLength);
  assert.equal(classicBodyLength(0), 4);
  assert.equal(classicBodyLength(1000), 1008);
  assert.equal(classicBodyLength(1001), 1013);
});

Deno.test("fillClassicBody from offset 0 regenerates exactly the seed's naive framing", () => {
  for (const size of SIZES) {
    const file = patterned(size);
    const expected = naiveSeedBody(file);
    const out = new Uint8Array(expected.byteLength + 16).fill(0xee);
    const n = fillClassicBody(out, 0, size, reader(file));
    assert.equal(n, expected.byteLength, `size ${size}`);
    assert.deepEqual(out.subarray(0, n), expected, `size ${size}`);
    assert.ok(out.subarray(n).every((b) => b === 0xee), `size ${size}: nothing written past the body`);
  }
});

Deno.test("fillClassicBody from every stream offset regenerates the rest of the seed's framing", () => {
  for (const size of SIZES) {
    const file = patterned(size);
    const expected = naiveSeedBody(file);
    for (let start = 0; start <= expected.byteLength; start++) {
      const out = new Uint8Array(expected.byteLength - start + 8);
      const n = fillClassicBody(out, start, size, reader(file));
      assert.equal(n, expected.byteLength - start, `size ${size}, offset ${start}`);
      assert.deepEqual(out.subarray(0, n), expected.subarray(start), `size ${size}, offset ${start}`);
    }
  }
});

Deno.test("fillClassicBody with small output buffers and short reads, from arbitrary offsets, matches the seed", () => {
  for (const size of SIZES) {
    const file = patterned(size);
    const expected = naiveSeedBody(file);
    for (const bufferSize of [1, 2, 3, 4, 5, 7, 999, 1003, 1004, 1005, 4096]) {
      for (const start of new Set([0, 1, 3, 4, 5, 1003, 1004, 1005, 1008, expected.byteLength - 5])) {
        if (start < 0 || start > expected.byteLength) continue;
        const how = `size ${size}, buffer ${bufferSize}, offset ${start}`;
        assert.deepEqual(streamBody(file, start, bufferSize), expected.subarray(start), how);
      }
    }
    // A pread that returns 7 bytes at a time changes nothing.
    assert.deepEqual(streamBody(file, 0, 2048, 7), expected, `size ${size}, short reads`);
  }
});

Deno.test("fillClassicBody at or past the end of the body fills nothing", () => {
  for (const size of SIZES) {
    const total = classicBodyLength(size);
    assert.equal(fillClassicBody(new Uint8Array(64), total, size, reader(patterned(size))), 0);
    assert.equal(fillClassicBody(new Uint8Array(64), total + 1000, size, reader(patterned(size))), 0);
  }
});

Deno.test("fillClassicBody throws FileShrankError when the file is shorter than announced", () => {
  const file = patterned(1500);
  // Announced 2500 bytes, the file has 1500: the second frame cannot be filled.
  assert.throws(() => fillClassicBody(new Uint8Array(4096), 0, 2500, reader(file)), FileShrankError);
  assert.throws(() => fillClassicBody(new Uint8Array(16), 1010, 2500, reader(file)), FileShrankError);
});

Deno.test("frames: lengths are signed little-endian, an end frame is four zero bytes", () => {
  const buf = new Uint8Array(8);
  putFrameLength(buf, 2, -2);
  assert.deepEqual([...buf.subarray(2, 6)], [0xfe, 0xff, 0xff, 0xff]);
  assert.equal(getFrameLength(buf, 2), -2);
  assert.deepEqual([...END_FRAME], [0, 0, 0, 0]);
  const raw = encodeRawFrame(encoder.encode("name.bin"));
  assert.equal(getFrameLength(raw, 0), 8);
  assert.equal(new TextDecoder().decode(raw.subarray(4)), "name.bin");
  assert.equal(getFrameLength(encoder.encode("GET "), 0), 0x20544547);
});

Deno.test("frames: a request is 'R' + JSON, an error response is 'E' + JSON then an end frame", () => {
  const request = encodeRequest({ v: 1, op: "get", path: "a/b.txt" });
  assert.equal(getFrameLength(request, 0), request.byteLength - 4);
  assert.equal(request[4], FrameType.Request);
  assert.deepEqual(decodeJson(request.subarray(5)), { v: 1, op: "get", path: "a/b.txt" });
  const error = encodeErrorResponse({ code: ErrorCode.Busy, message: "busy", retryAfterMs: 1000 });
  const len = getFrameLength(error, 0);
  assert.equal(error[4], FrameType.Error);
  assert.deepEqual(decodeJson(error.subarray(5, 4 + len)), {
    code: "BUSY",
    message: "busy",
    retryAfterMs: 1000,
  });
  assert.equal(error.byteLength, 4 + len + 4);
  assert.equal(getFrameLength(error, 4 + len), 0);
});

/** A request frame's payload: the type byte, then `body` as text or bytes. */
function payload(body: string | Uint8Array, type: number = FrameType.Request): Uint8Array {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  return new Uint8Array([type, ...bytes]);
}

/** Asserts that `fn` throws a ProtocolError with `code`. */
function assertRefused(fn: () => unknown, code: ErrorCodeValue, what: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `${what}: ${e}`);
    assert.equal(e.code, code, `${what}: ${e.message}`);
    return true;
  });
}

Deno.test("parseRequest accepts get, stat, list and ping, with their options, and ignores unknown fields", () => {
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"get","path":"dir/file.txt"}')), {
    v: 1,
    op: "get",
    path: "dir/file.txt",
    offset: 0,
  });
  const sha = "ab".repeat(32);
  assert.deepEqual(
    parseRequest(payload(`{"v":1,"op":"get","path":"f","offset":7,"ifMatch":"e1","ifNoneMatch":"${sha}"}`)),
    { v: 1, op: "get", path: "f", offset: 7, ifMatch: "e1", ifNoneMatch: sha },
  );
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"stat","path":"f"}')), { v: 1, op: "stat", path: "f" });
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"list","path":"","recursive":true}')), {
    v: 1,
    op: "list",
    path: "",
    recursive: true,
    stream: false,
  });
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"list","path":"d","stream":true}')), {
    v: 1,
    op: "list",
    path: "d",
    recursive: false,
    stream: true,
  });
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"ping"}')), { v: 1, op: "ping" });
  assert.deepEqual(parseRequest(payload('{"v":1,"op":"ping","path":"../x","later":true}')), {
    v: 1,
    op: "ping",
  });
  assert.deepEqual(parseRequest(payload(' {"op":"get","path":"x","v":1,"sha256":true} \n')), {
    v: 1,
    op: "get",
    path: "x",
    offset: 0,
  });
});

Deno.test("parseRequest refuses bad get options and a list option of the wrong type with BAD_REQUEST", () => {
  for (const bad of ['"offset":-1', '"offset":1.5', '"offset":"3"', '"ifMatch":7', '"ifNoneMatch":"xyz"']) {
    assertRefused(
      () => parseRequest(payload(`{"v":1,"op":"get","path":"f",${bad}}`)),
      ErrorCode.BadRequest,
      bad,
    );
  }
  assertRefused(
    () => parseRequest(payload('{"v":1,"op":"list","path":"","recursive":"yes"}')),
    ErrorCode.BadRequest,
    "recursive",
  );
});

Deno.test("parseRequest refuses malformed requests with BAD_REQUEST, UNSUPPORTED_VERSION or UNKNOWN_OP", () => {
  const cases: [string | Uint8Array, ErrorCodeValue, number?][] = [
    ['{"v":1,"op":"ping"}', ErrorCode.BadRequest, FrameType.Header], // not a request frame
    ['{"v":1,"op":"ping"}', ErrorCode.BadRequest, FrameType.Data],
    ["", ErrorCode.BadRequest],
    ['{"v":1,"op":"get"', ErrorCode.BadRequest],
    [new Uint8Array([0x7b, 0xff, 0x7d]), ErrorCode.BadRequest], // not UTF-8
    ["[1]", ErrorCode.BadRequest],
    ["null", ErrorCode.BadRequest],
    ['"get"', ErrorCode.BadRequest],
    ["7", ErrorCode.BadRequest],
    ['{"op":"ping"}', ErrorCode.BadRequest], // no version
    ['{"v":"1","op":"ping"}', ErrorCode.BadRequest],
    ['{"v":1.5,"op":"ping"}', ErrorCode.BadRequest],
    ['{"v":2,"op":"ping"}', ErrorCode.UnsupportedVersion],
    ['{"v":0,"op":"get","path":"x"}', ErrorCode.UnsupportedVersion],
    ['{"v":1,"op":"put","path":"x"}', ErrorCode.UnknownOp],
    ['{"v":1,"op":"GET","path":"x"}', ErrorCode.UnknownOp],
    ['{"v":1}', ErrorCode.UnknownOp],
    ['{"v":1,"op":"get"}', ErrorCode.BadRequest], // no path
    ['{"v":1,"op":"get","path":["x"]}', ErrorCode.BadRequest],
    ['{"v":1,"op":"get","path":""}', ErrorCode.BadRequest],
    ['{"v":1,"op":"get","path":"../x"}', ErrorCode.Forbidden],
  ];
  for (const [body, code, type] of cases) {
    assertRefused(() => parseRequest(payload(body, type)), code, `payload ${String(body)}`);
  }
});

Deno.test("checkRelativePath accepts plain relative paths up to 4096 bytes, returned unchanged", () => {
  const ok = [
    "a",
    "a/b/c.txt",
    "./a",
    "a//b",
    "a/",
    "..a",
    "a..",
    "a/...",
    "a/..b/c",
    ".hidden",
    "spaces and ünïcödé ✓",
    "x".repeat(MAX_PATH_BYTES),
    "é".repeat(MAX_PATH_BYTES / 2), // 4096 UTF-8 bytes in 2048 characters
  ];
  for (const path of ok) assert.equal(checkRelativePath(path), path);
});

Deno.test("checkRelativePath refuses empty, absolute, '..', NUL and over-long paths with their codes", () => {
  const refused: [string, ErrorCodeValue][] = [
    ["", ErrorCode.BadRequest],
    ["/etc/passwd", ErrorCode.Forbidden],
    ["/", ErrorCode.Forbidden],
    ["..", ErrorCode.Forbidden],
    ["../x", ErrorCode.Forbidden],
    ["a/../../x", ErrorCode.Forbidden],
    ["a/..", ErrorCode.Forbidden],
    ["a/../b", ErrorCode.Forbidden], // even one that would stay inside
    ["a\0b", ErrorCode.Forbidden],
    ["\0", ErrorCode.Forbidden],
    ["x".repeat(MAX_PATH_BYTES + 1), ErrorCode.Forbidden],
    ["é".repeat(MAX_PATH_BYTES / 2) + "x", ErrorCode.Forbidden], // 4097 bytes in 2049 characters
  ];
  for (const [path, code] of refused) {
    assertRefused(() => checkRelativePath(path), code, `path ${JSON.stringify(path.slice(0, 40))}`);
  }
});

Deno.test("the table of errors that close the connection is PROTOCOL.md's, and an unknown code closes", async () => {
  const protocol = await Deno.readTextFile(repoPath("PROTOCOL.md"));
  const documented = new Map<string, boolean>();
  for (const m of protocol.matchAll(/^\| `([A-Z_]+)` +\|.*\| (closed|open) +\|$/gm)) {
    documented.set(m[1], m[2] === "closed");
  }
  assert.deepEqual(
    Object.fromEntries(documented),
    Object.fromEntries(Object.values(ErrorCode).map((code) => [code, ERROR_CLOSES[code]])),
  );
  assert.equal(errorClosesConnection("NOT_FOUND"), false);
  assert.equal(errorClosesConnection("SOMETHING_NEWER"), true);
  assert.equal(errorClosesConnection("toString"), true, "only the table's own codes");
});

Deno.test("isSha256Hex takes 64 lowercase hex digits only", () => {
  assert.ok(isSha256Hex("0123456789abcdef".repeat(4)));
  for (
    const bad of ["0123456789ABCDEF".repeat(4), "a".repeat(63), "a".repeat(65), "g".repeat(64), 7, undefined]
  ) {
    assert.equal(isSha256Hex(bad), false, String(bad));
  }
});
