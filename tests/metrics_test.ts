/**
 * The metrics (`--metrics-listen`): the text passes `promtool check metrics`, and the counters move exactly
 * as the test's own requests predict: gets served and refused, bytes sent, a ping, a BUSY answer, and a
 * worker killed and restarted (whose slot keeps its counts).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createConnection } from "node:net";
import { encodeRequest, PROTOCOL_VERSION } from "../framing.ts";
import { HASH_CACHE_ENTRIES } from "../worker/hash_cache.ts";
import {
  childPids,
  eventually,
  RawConnection,
  runServerToExit,
  samples,
  scrape,
  sparseFile,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";

/** Starts a server with a metrics listener; returns it and the metrics port. */
async function serveWithMetrics(
  root: string,
  extra: string[] = [],
): Promise<{ server: TestServer; port: number }> {
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    root,
    "--metrics-listen",
    "127.0.0.1:0",
    ...extra,
  ]);
  const line = await server.waitForLog(/serving metrics at/);
  return { server, port: Number(/:(\d+)\/metrics/.exec(line)![1]) };
}

function at(s: Map<string, number>, series: string): number {
  return s.get(series) ?? 0;
}

/** Makes one request on a connection of its own; returns the answer's frame types and every byte received. */
async function requestOnce(
  port: number,
  request: Record<string, unknown>,
): Promise<{ types: string; bytes: number }> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest(request);
    let types = "", bytes = 0;
    for (;;) {
      const frame = await conn.readFrame();
      if (frame === null) throw new Error(`connection ended after '${types}'`);
      bytes += 4 + frame.length;
      if (frame.length === 0) return { types, bytes };
      types += String.fromCharCode(frame.payload[0]);
    }
  } finally {
    conn.close();
  }
}

async function promtoolCheck(body: string): Promise<void> {
  let child;
  try {
    child = new Deno.Command("promtool", {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    console.log("skipped promtool check metrics: promtool is not installed (Debian package prometheus)");
    return;
  }
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(body));
  await writer.close();
  const out = await child.output();
  const said = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `promtool check metrics failed:\n${said}`);
}

const GET_OK = 'ferry_requests_total{op="get",result="ok"}';
const GET_NOT_FOUND = 'ferry_requests_total{op="get",result="not_found"}';
const PING_OK = 'ferry_requests_total{op="ping",result="ok"}';
const DURATION_COUNT = "ferry_request_duration_seconds_count";

Deno.test("a scrape passes promtool, and gets, a missing file, a ping and the bytes sent move the counters exactly", async () => {
  await using root = await tempDir();
  await Deno.writeTextFile(`${root.path}/small.txt`, "x".repeat(1000));
  await Deno.writeFile(`${root.path}/large.bin`, new Uint8Array(40_000)); // cached in the memory file
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "2"]);
  try {
    const first = await scrape(port);
    assert.equal(first.status, "HTTP/1.1 200 OK");
    await promtoolCheck(first.body);
    const before = samples(first.body);
    const gets = 6;
    let bytes = 0;
    for (let i = 0; i < gets; i++) {
      const answer = await requestOnce(server.ports[0], {
        op: "get",
        path: i % 2 === 0 ? "small.txt" : "large.bin",
      });
      assert.match(answer.types, /^HD/);
      bytes += answer.bytes;
    }
    const missing = await requestOnce(server.ports[0], { op: "get", path: "no-such-file" });
    assert.equal(missing.types, "E");
    const ping = await requestOnce(server.ports[0], { op: "ping" });
    assert.equal(ping.types, "H");
    bytes += missing.bytes + ping.bytes;

    // A worker counts a request right after its last byte went out: wait until all are counted. A scrape
    // reads the request counters before the histogram, which a worker writes last, so the scrape that
    // first shows every request in the histogram may have read a counter just before it moved: the next
    // scrape starts after both were written.
    await eventually("every request counted", async () => {
      const seen = samples((await scrape(port)).body);
      return at(seen, DURATION_COUNT) >= at(before, DURATION_COUNT) + gets + 2;
    });
    const after = samples((await scrape(port)).body);
    assert.equal(at(after, GET_OK) - at(before, GET_OK), gets);
    assert.equal(at(after, GET_NOT_FOUND) - at(before, GET_NOT_FOUND), 1);
    assert.equal(at(after, PING_OK) - at(before, PING_OK), 1);
    assert.equal(at(after, DURATION_COUNT) - at(before, DURATION_COUNT), gets + 2);
    assert.equal(at(after, "ferry_sent_bytes_total") - at(before, "ferry_sent_bytes_total"), bytes);
    assert.equal(at(after, 'ferry_request_duration_seconds_bucket{le="+Inf"}'), at(after, DURATION_COUNT));
    // Each file is hashed once per worker that served it first, at most: two files, two workers.
    const hashed = at(after, "ferry_hashes_computed_total");
    assert.ok(hashed >= 2 && hashed <= 4, `hashes computed: ${hashed}`);
    const lookups = at(after, "ferry_reply_cache_hits_total") + at(after, "ferry_reply_cache_misses_total");
    assert.equal(lookups, gets + 1, "every plain get looked in the reply cache once");
    assert.equal(at(after, "ferry_workers"), 2);
    assert.equal(at(after, "ferry_workers_ready"), 2);
    assert.ok(at(after, 'ferry_open_fds{process="master"}') > 0);
    await promtoolCheck((await scrape(port)).body);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a tree listed twice counts its entries built from their stat, then reused from the worker's memo, full ones for a brief listing too", async () => {
  await using root = await tempDir();
  await Deno.mkdir(`${root.path}/d`);
  for (let i = 0; i < 30; i++) await Deno.writeTextFile(`${root.path}/d/${i}.txt`, `${i}\n`);
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "1"]);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    const listed = async (brief = false) => {
      await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true, brief });
      const frames = (await conn.readResponse()).json;
      return frames.flatMap((f) => (f.entries ?? []) as unknown[]).length;
    };
    const entries = (
      s: Map<string, number>,
    ) => [
      at(s, 'ferry_listing_entries_total{entry="built"}'),
      at(s, 'ferry_listing_entries_total{entry="reused"}'),
    ];
    assert.deepEqual(entries(samples((await scrape(port)).body)), [0, 0]);
    assert.equal(await listed(), 30);
    assert.deepEqual(entries(samples((await scrape(port)).body)), [30, 0]);
    assert.equal(await listed(), 30);
    assert.deepEqual(entries(samples((await scrape(port)).body)), [30, 30]);
    await Deno.writeTextFile(`${root.path}/d/0.txt`, "changed, and longer\n");
    assert.equal(await listed(), 30);
    assert.deepEqual(entries(samples((await scrape(port)).body)), [31, 59]);
    // Kept full, the entries serve a brief listing too (cut short), and stay full for the next full one.
    assert.equal(await listed(true), 30);
    assert.deepEqual(entries(samples((await scrape(port)).body)), [31, 89]);
    assert.equal(await listed(), 30);
    assert.deepEqual(entries(samples((await scrape(port)).body)), [31, 119]);
    await promtoolCheck((await scrape(port)).body);
  } finally {
    conn.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a tree of more files than the hash cache holds, inlined twice: the second listing hashes none of them again", async () => {
  await using root = await tempDir();
  const files = HASH_CACHE_ENTRIES + 64;
  for (let d = 0; d < 10; d++) {
    await Deno.mkdir(`${root.path}/d${d}`);
    for (let i = d; i < files; i += 10) {
      Deno.writeFileSync(`${root.path}/d${d}/${i}`, new Uint8Array([i & 0xff]));
    }
  }
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "1"]);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    const hashed = async () => at(samples((await scrape(port)).body), "ferry_hashes_computed_total");
    const inlined = async () => {
      await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true, brief: true, inline: 1 });
      const entries = (await conn.readResponse()).json.flatMap((f) =>
        (f.entries ?? []) as { inline?: true }[]
      );
      return entries.filter((e) => e.inline).length;
    };
    assert.equal(await inlined(), files);
    assert.equal(await hashed(), files, "each file hashed once, as it was read");
    // The hash cache kept the last HASH_CACHE_ENTRIES of them; the listing memo has the others' too.
    assert.equal(await inlined(), files);
    assert.equal(await hashed(), files, "no file hashed again");
  } finally {
    conn.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a BUSY answer and a killed worker each count once, and the restarted worker keeps its slot's counts", async () => {
  await using root = await tempDir();
  await sparseFile(root.path, "huge.bin", 1 << 30);
  await Deno.writeTextFile(`${root.path}/small.txt`, "small\n");
  const { server, port } = await serveWithMetrics(root.path, [
    "--workers",
    "1",
    "--conns-per-worker",
    "1",
    "--queue",
    "0",
  ]);
  try {
    assert.equal((await requestOnce(server.ports[0], { op: "get", path: "small.txt" })).types, "HD");
    // The worker sets its gauges after it has told the master of the connections that ended: once a scrape
    // shows none open, the master has that message, and has taken it by the time it answers the next scrape
    // (one epoll loop), so the worker's one slot is free for the connection below.
    await eventually("the get counted and its connection closed", async () => {
      const seen = samples((await scrape(port)).body);
      return at(seen, GET_OK) === 1 && at(seen, 'ferry_connections_open{worker="1"}') === 0;
    });
    const before = samples((await scrape(port)).body);
    // A client that reads nothing of a 1 GiB answer keeps the worker's one slot.
    const holder = await RawConnection.open(server.ports[0]);
    await holder.sendRequest({ op: "get", path: "huge.bin" });
    assert.equal((await holder.readFrame())!.payload[0], "H".charCodeAt(0), "the worker is answering");
    const refused = await RawConnection.open(server.ports[0]);
    await refused.sendRequest({ op: "ping" });
    const busy = await refused.readResponse();
    refused.close();
    assert.equal(busy.json[0].code, "BUSY");
    const afterBusy = samples((await scrape(port)).body);
    assert.equal(
      at(afterBusy, 'ferry_busy_total{reason="full"}') - at(before, 'ferry_busy_total{reason="full"}'),
      1,
    );
    // The worker sets its gauges at the end of a loop turn, which may come after the BUSY answer.
    await eventually("the held connection counted as answering", async () => {
      return at(samples((await scrape(port)).body), 'ferry_connections_answering{worker="1"}') === 1;
    });

    const [worker] = await childPids(server.pid);
    Deno.kill(worker, "SIGKILL");
    await server.waitForLog(/worker 1 is gone/);
    holder.close();
    let afterKill = afterBusy;
    await eventually("the worker restarted and ready", async () => {
      afterKill = samples((await scrape(port)).body);
      return at(afterKill, "ferry_workers_ready") === 1 && at(afterKill, "ferry_worker_restarts_total") >= 1;
    });
    assert.equal(at(afterKill, "ferry_worker_restarts_total") - at(before, "ferry_worker_restarts_total"), 1);
    assert.equal(at(afterKill, GET_OK), 1, "the new worker went on from its slot's counts");
    assert.equal((await requestOnce(server.ports[0], { op: "get", path: "small.txt" })).types, "HD");
    await eventually("the new worker's get counted", async () => {
      return at(samples((await scrape(port)).body), GET_OK) === 2;
    });
    assert.notEqual(at(afterKill, 'ferry_open_fds{process="worker",worker="1"}'), 0);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("the metrics listener answers 404 elsewhere, and --no-metrics with --metrics-listen is a usage error", async () => {
  await using root = await tempDir();
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "1"]);
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    const text = await new Response(conn.readable).text();
    assert.match(text, /^HTTP\/1\.1 404 /);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const out = await runServerToExit([
    "--listen",
    "127.0.0.1:0",
    "--root",
    root.path,
    "--no-metrics",
    "--metrics-listen",
    "127.0.0.1:0",
  ]);
  assert.equal(out.code, 2);
  assert.match(out.stderr, /--metrics-listen and --no-metrics/);
});

/** Connects to `port` from the source address `from`, sends `bytes`, and returns all it read until closed. */
function exchangeFrom(port: number, from: string, bytes: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    const socket = createConnection(
      { host: "127.0.0.1", port, localAddress: from },
      () => socket.write(bytes),
    );
    socket.on("data", (chunk: Uint8Array) => chunks.push(chunk));
    socket.on("error", (e: NodeJS.ErrnoException) => e.code === "ECONNRESET" ? undefined : reject(e));
    socket.on("close", () => resolve(new Uint8Array(Buffer.concat(chunks))));
  });
}

Deno.test("the allow-lists hold for the metrics listener too, and their refusals are counted", async () => {
  await using root = await tempDir();
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "1", "--deny", "127.0.0.2"]);
  try {
    const ping = encodeRequest({ v: PROTOCOL_VERSION, op: "ping" });
    const scrapeRequest = new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert.equal((await exchangeFrom(server.ports[0], "127.0.0.2", ping)).length, 0, "the file port: closed");
    assert.equal(
      (await exchangeFrom(port, "127.0.0.2", scrapeRequest)).length,
      0,
      "the metrics port: closed",
    );
    const body = samples((await scrape(port)).body);
    assert.equal(at(body, 'ferry_refused_total{reason="allow_list"}'), 2);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("GET /metrics on the file port answers the same metrics, unlogged; with --tokens it is refused", async () => {
  await using root = await tempDir();
  const { server, port } = await serveWithMetrics(root.path, ["--workers", "1", "--request-log", "-"]);
  try {
    const own = await scrape(server.ports[0]);
    assert.equal(own.status, "HTTP/1.1 200 OK");
    await promtoolCheck(own.body);
    const families = (body: string) => body.split("\n").filter((l) => l.startsWith("# TYPE")).sort();
    assert.deepEqual(families(own.body), families((await scrape(port)).body), "the same families");
    // A logged request after the scrape, on the same worker: once its line is in, so would the scrape's be.
    assert.equal(
      (await requestOnce(server.ports[0], { v: PROTOCOL_VERSION, op: "stat", path: "x" })).types,
      "E",
    );
    await server.waitForLog(/request=STAT "x"/);
    assert.ok(
      !server.log.some((l) => l.includes("request=HTTP")),
      "a scrape is not logged without --log-health",
    );
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  await Deno.writeTextFile(`${root.path}.tokens`, "ci 0123456789abcdef0123 *\n", { mode: 0o600 });
  const guarded = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    root.path,
    "--workers",
    "1",
    "--tokens",
    `${root.path}.tokens`,
  ]);
  try {
    assert.equal((await scrape(guarded.ports[0])).status, "HTTP/1.1 403 Forbidden");
  } finally {
    assert.equal((await guarded.stop()).code, 0);
    await Deno.remove(`${root.path}.tokens`);
  }
});
