/**
 * Where the one line per request goes (`--request-log`): stderr by default, a file that every worker
 * appends to, or nowhere; the server's own lines stay on stderr in every case.
 */
import assert from "node:assert/strict";
import { RawConnection, runServerToExit, startServer, tempDir, type TestServer } from "./helpers.ts";

const REQUEST_LINE =
  /peer=127\.0\.0\.1:\d+ worker=\d+ request=(GET "hello\.txt"|PING) bytes=\d+ .*result=ok$/;

/** Makes `count` requests on new connections, alternately a get and a ping. */
async function makeRequests(server: TestServer, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const conn = await RawConnection.open(server.ports[0]);
    try {
      await conn.sendRequest(i % 2 === 0 ? { op: "get", path: "hello.txt" } : { op: "ping" });
      await conn.readResponse();
    } finally {
      conn.close();
    }
  }
}

function serve(requestLog: string[]): Promise<TestServer> {
  // Pings are logged only with --log-health.
  return startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    "demo",
    "--workers",
    "2",
    "--log-health",
    ...requestLog,
  ]);
}

Deno.test("by default each request is one line on stderr", async () => {
  const server = await serve([]);
  try {
    await makeRequests(server, 4);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  assert.equal(server.log.filter((l) => REQUEST_LINE.test(l)).length, 4);
});

Deno.test("--request-log FILE: request lines are appended to FILE; stderr keeps the server's own", async () => {
  await using dir = await tempDir();
  const file = `${dir.path}/requests.log`;
  await Deno.writeTextFile(file, "an earlier line\n");
  const server = await serve(["--request-log", file]);
  try {
    await Promise.all(Array.from({ length: 4 }, () => makeRequests(server, 5)));
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const lines = (await Deno.readTextFile(file)).trimEnd().split("\n");
  assert.equal(lines[0], "an earlier line", "appended, not truncated");
  assert.equal(lines.length, 21);
  for (const line of lines.slice(1)) assert.match(line, REQUEST_LINE);
  assert.ok(server.log.some((l) => l.includes("ready with 2 workers")));
  assert.equal(server.log.filter((l) => / request=/.test(l)).length, 0, "no request line on stderr");
});

Deno.test("--request-log off: no request lines anywhere, the server still serves and logs its own lines", async () => {
  const server = await serve(["--request-log", "off"]);
  try {
    await makeRequests(server, 4);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  assert.ok(server.log.some((l) => l.includes("ready with 2 workers")));
  assert.equal(server.log.filter((l) => / request=/.test(l)).length, 0);
});

Deno.test("--request-log with a file that cannot be written: exit 2 and one line naming it", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/missing-dir/requests.log`;
  const out = await runServerToExit(["--listen", "127.0.0.1:0", "--root", "demo", "--request-log", path]);
  assert.equal(out.code, 2);
  assert.match(
    out.stderr,
    /^ferry server: --request-log: cannot append to '.*missing-dir\/requests\.log': [^\n]+\n$/,
  );
});
