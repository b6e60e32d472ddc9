/**
 * The PROXY header parser and the CIDR matcher on their own: every version 1 and 2 form the master must
 * take (and the ones it must refuse), headers cut at every byte, and CIDRs of both families.
 */

import assert from "node:assert/strict";
import { looksLikeProxyHeader, parseProxyHeader, PROXY_V2_SIGNATURE } from "../server/proxy_header.ts";
import { cidrContains, formatIp, parseCidr } from "../server/cidr.ts";

// libc (inet_pton) is bound on first use: bind it before any test, since the sanitizer counts a library
// opened during a test as a leak.
parseCidr("::1");

const text = (s: string) => new TextEncoder().encode(s);

function v2(command: number, family: number, body: number[]): Uint8Array {
  return new Uint8Array([
    ...PROXY_V2_SIGNATURE,
    command,
    family,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

Deno.test("parseProxyHeader reads version 1 TCP4, TCP6 and UNKNOWN, and says how long the header is", () => {
  const tcp4 = parseProxyHeader(text("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nREST"));
  assert.equal(tcp4.kind, "proxied");
  if (tcp4.kind === "proxied") {
    assert.deepEqual([formatIp(tcp4.source), tcp4.port, tcp4.length, tcp4.version], [
      "192.0.2.1",
      56324,
      45,
      1,
    ]);
  }
  const tcp6 = parseProxyHeader(text("PROXY TCP6 2001:db8::1 ::1 1 2\r\n"));
  assert.ok(tcp6.kind === "proxied" && formatIp(tcp6.source) === "2001:db8:0:0:0:0:0:1");
  assert.deepEqual(parseProxyHeader(text("PROXY UNKNOWN\r\n")), { kind: "local", length: 15, version: 1 });
  assert.equal(parseProxyHeader(text("PROXY UNKNOWN ffff::1 ::1 1 2\r\n")).kind, "local");
});

Deno.test("parseProxyHeader refuses malformed version 1 lines with a reason", () => {
  for (
    const line of [
      "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
      "PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
      "PROXY TCP4 ::1 ::1 1 2\r\n",
      "PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
      "PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
      "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
      "PROXY " + "x".repeat(120),
      "PROXZ",
    ]
  ) {
    const r = parseProxyHeader(text(line));
    assert.equal(r.kind, "invalid", JSON.stringify(line));
  }
});

Deno.test("parseProxyHeader reads version 2 PROXY over IPv4 and IPv6, LOCAL, and skips TLVs", () => {
  const ip4 = v2(0x21, 0x11, [192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80, 0x04, 0, 1, 0]);
  const r4 = parseProxyHeader(ip4);
  assert.ok(r4.kind === "proxied" && formatIp(r4.source) === "192.0.2.7" && r4.port === 8080);
  assert.equal(r4.length, ip4.byteLength);
  const ip6 = v2(0x21, 0x21, [
    ...new Array(10).fill(0),
    0xff,
    0xff,
    192,
    0,
    2,
    8,
    ...new Array(16).fill(0),
    0,
    1,
    0,
    2,
  ]);
  const r6 = parseProxyHeader(ip6);
  assert.ok(r6.kind === "proxied" && formatIp(r6.source) === "192.0.2.8", "a mapped address is IPv4");
  assert.deepEqual(parseProxyHeader(v2(0x20, 0x00, [])), { kind: "local", length: 16, version: 2 });
  assert.equal(parseProxyHeader(v2(0x21, 0x00, [])).kind, "local"); // UNSPEC: the connection's address
  assert.equal(parseProxyHeader(v2(0x21, 0x12, new Array(12).fill(0))).kind, "invalid"); // UDP
  assert.equal(parseProxyHeader(v2(0x21, 0x11, [1, 2, 3])).kind, "invalid"); // addresses cut short
  assert.equal(parseProxyHeader(v2(0x31, 0x11, new Array(12).fill(0))).kind, "invalid"); // version 3
  assert.equal(parseProxyHeader(v2(0x22, 0x11, new Array(12).fill(0))).kind, "invalid"); // command 2
});

Deno.test("a header cut at any byte is incomplete, never invalid or accepted", () => {
  const headers = [
    text("PROXY TCP6 2001:db8::1 2001:db8::2 65535 1\r\n"),
    v2(0x21, 0x11, [192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]),
  ];
  for (const header of headers) {
    for (let n = 0; n < header.byteLength; n++) {
      assert.deepEqual(parseProxyHeader(header.subarray(0, n)), { kind: "incomplete" }, `${n} bytes`);
    }
    assert.equal(parseProxyHeader(header).kind, "proxied");
  }
});

Deno.test("looksLikeProxyHeader tells a header from a ferry frame once 4 bytes are in", () => {
  assert.ok(looksLikeProxyHeader(text("PROX")));
  assert.ok(looksLikeProxyHeader(PROXY_V2_SIGNATURE.subarray(0, 4)));
  assert.ok(!looksLikeProxyHeader(text("PRO")));
  assert.ok(!looksLikeProxyHeader(new Uint8Array([20, 0, 0, 0, 0x52])));
  assert.ok(!looksLikeProxyHeader(text("GET / HTTP/1.1\r\n")));
});

Deno.test("CIDRs: IPv4 and IPv6 prefixes, hosts, mapped addresses, and bad ones refused with the reason", () => {
  const ip = (s: string) => parseCidr(s).bytes;
  assert.ok(cidrContains(parseCidr("10.0.0.0/8"), ip("10.255.1.2")));
  assert.ok(!cidrContains(parseCidr("10.0.0.0/8"), ip("11.0.0.1")));
  assert.ok(cidrContains(parseCidr("192.168.4.0/22"), ip("192.168.7.255")));
  assert.ok(!cidrContains(parseCidr("192.168.4.0/22"), ip("192.168.8.0")));
  assert.ok(cidrContains(parseCidr("0.0.0.0/0"), ip("203.0.113.9")));
  assert.ok(!cidrContains(parseCidr("0.0.0.0/0"), ip("::1")), "families do not mix");
  assert.ok(cidrContains(parseCidr("2001:db8::/32"), ip("2001:db8:ffff::1")));
  assert.ok(cidrContains(parseCidr("::1"), ip("::1")));
  assert.ok(!cidrContains(parseCidr("::1"), ip("::2")));
  assert.ok(cidrContains(parseCidr("192.0.2.0/24"), ip("::ffff:192.0.2.5")));
  assert.ok(cidrContains(parseCidr("::ffff:192.0.2.0/120"), ip("192.0.2.5")));
  for (const bad of ["10.0.0.1/8", "10.0.0.0/33", "10.0.0/8", "::1/129", "fe80::/x", "", "10.0.0.0/"]) {
    assert.throws(() => parseCidr(bad), /is not a CIDR/, bad);
  }
});
