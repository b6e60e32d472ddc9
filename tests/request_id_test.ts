/**
 * Request ids and the log's formats: every answer carries a `requestId` (a Header or an Error field) that
 * its request log line names, whatever built the answer (a cached reply in the heap or in the memory file,
 * a listing, a hash waited for, an error); `--log-format json` writes one object per line; pings are
 * logged only with `--log-health`; the client shows the id in its error lines and its `--json` lines.
 */
import assert from "node:assert/strict";
import { RawConnection, runClient, startServer, tempDir, type TestServer } from "./helpers.ts";

const REQUEST_ID = /^[a-z2-7]{8}-[0-9a-z]+$/;

/** Sends `request` on `conn` and returns the answer's request id (from its first frame) and its data. */
async function idOf(
  conn: RawConnection,
  request: Record<string, unknown>,
): Promise<{ id: string; data: Uint8Array }> {
  await conn.sendRequest(request);
  const answer = await conn.readResponse();
  const id = answer.json[0].requestId;
  assert.equal(typeof id, "string", `no requestId in ${JSON.stringify(answer.json[0])}`);
  assert.match(id as string, REQUEST_ID);
  return { id: id as string, data: answer.data };
}

async function serve(root: string, extra: string[]): Promise<TestServer> {
  return await startServer(["--listen", "127.0.0.1:0", "--root", root, "--workers", "1", ...extra]);
}

Deno.test("every kind of answer carries a request id that its log line names, and pings are not logged", async () => {
  await using root = await tempDir();
  const heap = new TextEncoder().encode("a small file\n");
  const memory = new Uint8Array(40_000).map((_, i) => i % 251);
  await Deno.writeFile(`${root.path}/heap.txt`, heap);
  await Deno.writeFile(`${root.path}/memory.bin`, memory);
  const server = await serve(root.path, []);
  const ids: string[] = [];
  try {
    const conn = await RawConnection.open(server.ports[0]);
    try {
      for (let i = 0; i < 2; i++) { // the second of each comes from the reply cache
        const small = await idOf(conn, { op: "get", path: "heap.txt" });
        assert.deepEqual(small.data, heap);
        const large = await idOf(conn, { op: "get", path: "memory.bin" });
        assert.deepEqual(large.data, memory);
        ids.push(small.id, large.id);
      }
      ids.push((await idOf(conn, { op: "get", path: "heap.txt", ifNoneMatch: "0".repeat(64) })).id);
      ids.push((await idOf(conn, { op: "stat", path: "memory.bin" })).id);
      ids.push((await idOf(conn, { op: "list", path: "" })).id);
      ids.push((await idOf(conn, { op: "list", path: "", stream: true })).id);
      ids.push((await idOf(conn, { op: "get", path: "missing.txt" })).id);
      const ping = await idOf(conn, { op: "ping" });
      assert.equal(new Set([...ids, ping.id]).size, ids.length + 1, "ids are distinct");
      await conn.sendRequest({ op: "get", path: "/etc/passwd" });
      const forbidden = await conn.readResponse();
      assert.equal(forbidden.json[0].code, "FORBIDDEN");
      ids.push(forbidden.json[0].requestId as string);
      await server.waitForLog(new RegExp(`id=${ids.at(-1)} `));
      assert.ok(!server.log.some((l) => l.includes(ping.id)), "the ping is not logged");
    } finally {
      conn.close();
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  for (const id of ids) {
    assert.equal(server.log.filter((l) => l.includes(` id=${id} `)).length, 1, `one log line names ${id}`);
  }
});

Deno.test("--log-format json: one object per line for requests and the server's own lines; --log-health logs pings", async () => {
  await using root = await tempDir();
  await Deno.writeTextFile(`${root.path}/a.txt`, "a\n");
  const server = await serve(root.path, ["--log-format", "json", "--log-health"]);
  let id: string;
  try {
    const conn = await RawConnection.open(server.ports[0]);
    try {
      id = (await idOf(conn, { op: "get", path: "a.txt" })).id;
      await idOf(conn, { op: "ping" });
      await server.waitForLog(/"request":"PING"/);
    } finally {
      conn.close();
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const objects = server.log.map((line) => JSON.parse(line));
  const get = objects.find((o) => o.id === id);
  assert.equal(get.request, 'GET "a.txt"');
  assert.equal(get.result, "ok");
  assert.equal(get.worker, 1);
  assert.match(get.peer, /^127\.0\.0\.1:\d+$/);
  assert.equal(typeof get.bytes, "number");
  assert.equal(typeof get.duration, "number");
  assert.ok(objects.some((o) => o.process === "master" && /^ready with 1 workers$/.test(o.message)));
});

Deno.test("the client names the request id in its error line and in its --json lines", async () => {
  await using root = await tempDir();
  await using out = await tempDir();
  await Deno.writeTextFile(`${root.path}/a.txt`, "a\n");
  const server = await serve(root.path, []);
  const address = `127.0.0.1:${server.ports[0]}`;
  try {
    const missing = await runClient(["get", address, "nope.txt", "-o", `${out.path}/nope.txt`]);
    assert.equal(missing.code, 5);
    const failed = /\[request ([a-z2-7]{8}-[0-9a-z]+)\]/.exec(missing.stderr);
    assert.ok(failed, missing.stderr);
    await server.waitForLog(new RegExp(`id=${failed[1]} .*result=refused NOT_FOUND`));

    const ok = await runClient(["get", address, "a.txt", "-o", `${out.path}/a.txt`, "--json"]);
    assert.equal(ok.code, 0, ok.stderr);
    const line = JSON.parse(new TextDecoder().decode(ok.stdout));
    assert.match(line.requestId, REQUEST_ID);
    await server.waitForLog(new RegExp(`id=${line.requestId} .*request=GET "a.txt"`));

    const refused = await runClient(["get", address, "nope.txt", "-o", `${out.path}/nope.txt`, "--json"]);
    assert.match(JSON.parse(new TextDecoder().decode(refused.stdout)).requestId, REQUEST_ID);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});
