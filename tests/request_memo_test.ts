/**
 * Remembered requests: the same bytes give the same parsed request, different bytes never share one, and
 * a request that fails to parse fails every time.
 */

import assert from "node:assert/strict";
import { encodeRequest, ErrorCode, FRAME_HEADER_SIZE, PROTOCOL_VERSION, ProtocolError } from "../framing.ts";
import { parseRequestRemembered } from "../worker/request_memo.ts";

/** The payload of a request frame (type byte first), as a connection hands it over. */
function payload(request: Record<string, unknown>): Uint8Array {
  return encodeRequest({ v: PROTOCOL_VERSION, op: "get", ...request } as never).slice(FRAME_HEADER_SIZE);
}

Deno.test("the same request bytes give the same parsed request, which cannot be changed", () => {
  const first = parseRequestRemembered(payload({ path: "etc/app.conf" }));
  const again = parseRequestRemembered(payload({ path: "etc/app.conf" }));
  assert.equal(again, first);
  assert.equal(first.path, "etc/app.conf");
  assert.ok(Object.isFrozen(first));
});

Deno.test("requests that differ in any byte are parsed apart, also past the number remembered", () => {
  const paths = Array.from({ length: 5000 }, (_, i) => `dir/file-${i}.bin`); // more than are remembered
  for (let round = 0; round < 2; round++) {
    for (const path of paths) assert.equal(parseRequestRemembered(payload({ path })).path, path);
  }
  const plain = parseRequestRemembered(payload({ path: "a" }));
  const conditional = parseRequestRemembered(payload({ path: "a", ifNoneMatch: "0".repeat(64) }));
  assert.equal(plain.ifNoneMatch, undefined);
  assert.equal(conditional.ifNoneMatch, "0".repeat(64));
});

Deno.test("a request that fails to parse throws every time it is sent", () => {
  for (let i = 0; i < 3; i++) {
    assert.throws(
      () => parseRequestRemembered(payload({ path: "../escape" })),
      (e) => e instanceof ProtocolError && e.code === ErrorCode.Forbidden,
    );
  }
});
