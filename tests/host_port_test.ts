/**
 * `HOST:PORT` text as the command lines take it: the server's numeric endpoints (`--listen`, the load
 * generator's targets) and the client's server address share one syntax, and each refuses what it cannot use
 * with a message naming the text.
 */

import assert from "node:assert/strict";
import { C } from "../ffi/libc.ts";
import { decodeSockaddr, encodeSockaddr, formatEndpoint } from "../ffi/sockaddr.ts";
import { parseEndpoint, splitHostPort } from "../host_port.ts";
import { parseServerAddress } from "../client.ts";

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
decodeSockaddr(encodeSockaddr(parseEndpoint("[::1]:1")));

Deno.test("parseEndpoint takes numeric IPv4, bracketed IPv6 and localhost, with ports 0 to 65535", () => {
  assert.deepEqual(parseEndpoint("127.0.0.1:7420"), { family: C.AF_INET, host: "127.0.0.1", port: 7420 });
  assert.deepEqual(parseEndpoint("[::1]:0"), { family: C.AF_INET6, host: "::1", port: 0 });
  assert.deepEqual(parseEndpoint("localhost:65535"), { family: C.AF_INET, host: "127.0.0.1", port: 65535 });
  assert.deepEqual(parseEndpoint("[::ffff:10.0.0.1]:80").host, "::ffff:10.0.0.1");
});

Deno.test("parseEndpoint refuses a missing port, a port above 65535, names and unbracketed IPv6", () => {
  assert.throws(() => parseEndpoint("127.0.0.1"), /'127.0.0.1' is not HOST:PORT/);
  assert.throws(() => parseEndpoint("127.0.0.1:65536"), /port 65536 is out of range 0-65535/);
  assert.throws(() => parseEndpoint("example.org:80"), /'example.org' is not a numeric IPv4 address/);
  assert.throws(() => parseEndpoint("[127.0.0.1]:80"), /is not a numeric IPv6 address/);
  assert.throws(() => parseEndpoint("::1:80"), /is not HOST:PORT/);
  assert.throws(() => parseEndpoint("1.2.3.256:80"), /is not a numeric IPv4 address/);
});

Deno.test("an endpoint survives encoding to a sockaddr and decoding back, and formats as it was written", () => {
  for (const text of ["127.0.0.1:7420", "[::1]:7420", "[2001:db8::8]:1", "10.1.2.3:65535"]) {
    const endpoint = parseEndpoint(text);
    const sockaddr = encodeSockaddr(endpoint);
    assert.equal(sockaddr.byteLength, endpoint.family === C.AF_INET6 ? 28 : 16, text);
    assert.deepEqual(decodeSockaddr(sockaddr), endpoint, text);
    assert.equal(formatEndpoint(endpoint), text);
  }
});

Deno.test("sockaddrs have the kernel's layout: family, port in network order, then the address", () => {
  const v4 = new Uint8Array(16);
  v4.set([C.AF_INET, 0, 0x1c, 0xfc, 127, 0, 0, 1]);
  assert.deepEqual(encodeSockaddr(parseEndpoint("127.0.0.1:7420")), v4);
  const v6 = new Uint8Array(28); // sin6_flowinfo (4 bytes) before the address, sin6_scope_id after it
  v6.set([C.AF_INET6, 0, 0x1c, 0xfc]);
  v6[8 + 15] = 1;
  assert.deepEqual(encodeSockaddr(parseEndpoint("[::1]:7420")), v6);
});

Deno.test("the client's server address takes host names too, and only ports 1 to 65535", () => {
  assert.deepEqual(splitHostPort("[::1]:7420"), { host: "::1", bracketed: true, port: 7420 });
  assert.deepEqual(splitHostPort("files.example.org:7420"), {
    host: "files.example.org",
    bracketed: false,
    port: 7420,
  });
  assert.equal(splitHostPort("files.example.org"), null);
  assert.deepEqual(parseServerAddress("files.example.org:7420"), {
    hostname: "files.example.org",
    port: 7420,
  });
  assert.deepEqual(parseServerAddress("[::1]:1"), { hostname: "::1", port: 1 });
  assert.throws(() => parseServerAddress("files.example.org:0"), /port 1-65535/);
  assert.throws(() => parseServerAddress("files.example.org"), /is not HOST:PORT/);
});
