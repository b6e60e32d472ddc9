/**
 * SIGHUP reloads without dropping a connection: the request log is reopened (after logrotate renamed
 * it), `--root` is reopened so that a switched `current` symlink serves the new release to new
 * connections while a transfer in flight finishes from the file it opened, and no worker dies. Also
 * `--pid-file` and `--version`.
 */
import assert from "node:assert/strict";
import {
  childPids,
  makeFile,
  openFds,
  RawConnection,
  repoPath,
  runClient,
  sha256,
  sha256File,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import { FERRY_VERSION } from "../version.ts";

/**
 * More than the socket buffers hold while the client reads nothing (a 4 MiB send buffer, a receive window
 * that does not grow unread): the transfer is still under way when the reload happens.
 */
const BIG = 8 * 1024 * 1024;

/** A root `current` -> `releases/1`, each release with `big.bin` and `name.txt` that differ. */
async function releases(dir: string): Promise<{ current: string; bigOf: string[] }> {
  const bigOf = [];
  for (const n of [1, 2]) {
    await Deno.mkdir(`${dir}/releases/${n}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/releases/${n}/name.txt`, `release ${n}\n`);
    bigOf.push(await sha256File(await makeFile(`${dir}/releases/${n}`, "big.bin", BIG + n)));
  }
  await Deno.symlink("releases/1", `${dir}/current`);
  return { current: `${dir}/current`, bigOf };
}

/** Switches `current` to `releases/2` as an operator does: a new symlink renamed over the old one. */
async function switchToRelease2(dir: string): Promise<void> {
  await Deno.symlink("releases/2", `${dir}/current.new`);
  await Deno.rename(`${dir}/current.new`, `${dir}/current`);
}

/** Sends SIGHUP and waits until the master says every worker has reloaded. */
async function reload(server: TestServer): Promise<void> {
  const from = server.log.length;
  server.kill("SIGHUP");
  await server.waitForLog(/master\[\d+\]: reloaded$/, from);
}

async function getText(port: number, path: string, conn?: RawConnection): Promise<string> {
  const c = conn ?? await RawConnection.open(port);
  try {
    await c.sendRequest({ op: "get", path });
    return new TextDecoder().decode((await c.readResponse()).data);
  } finally {
    if (conn === undefined) c.close();
  }
}

Deno.test("SIGHUP with a transfer in flight: it completes with the old bytes, new connections see the switched root", async () => {
  await using dir = await tempDir();
  const { current, bigOf } = await releases(dir.path);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", current, "--workers", "2"]);
  const port = server.ports[0];
  try {
    const workersBefore = await childPids(server.pid);
    const inFlight = await RawConnection.open(port);
    await inFlight.sendRequest({ op: "get", path: "big.bin" });
    const header = await inFlight.readFrame(); // the transfer has started: its file is open
    assert.ok(header !== null && String.fromCharCode(header.payload[0]) === "H");
    const sending = await Promise.all(workersBefore.map(async (pid) => [...(await openFds(pid)).values()]));
    assert.ok(sending.flat().includes(`${dir.path}/releases/1/big.bin`), "a worker is sending release 1");

    await switchToRelease2(dir.path);
    await reload(server);

    assert.equal(await getText(port, "name.txt"), "release 2\n", "a new connection sees the new tree");
    // The rest of the transfer in flight, read only now: the old release's bytes, whole.
    const rest = await inFlight.readResponse();
    assert.equal(sha256(rest.data), bigOf[0]);
    // The connection open before the reload keeps the tree it began with for its next request.
    assert.equal(await getText(port, "name.txt", inFlight), "release 1\n");
    inFlight.close();
    assert.equal(await getText(port, "big.bin").then((t) => t.length > 0), true);

    assert.deepEqual(await childPids(server.pid), workersBefore, "no worker was replaced");
    assert.ok(
      server.log.some((l) => l.includes(`leads to ${dir.path}/releases/2 now (was ${dir.path}/releases/1)`)),
    );
    assert.equal(server.log.filter((l) => /worker=\d reloaded: .*root: .* reopened/.test(l)).length, 2);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  assert.ok(!server.log.some((l) => /exited with|is gone/.test(l)), server.log.join("\n"));
});

Deno.test("SIGHUP reopens the request log: after a rename, new lines go to a new file at the same path", async () => {
  await using dir = await tempDir();
  const file = `${dir.path}/requests.log`;
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    "demo",
    "--workers",
    "2",
    "--request-log",
    file,
  ]);
  try {
    await getText(server.ports[0], "hello.txt");
    await Deno.rename(file, `${file}.1`); // what logrotate does
    await reload(server);
    await getText(server.ports[0], "docs/readme.txt");
    // Nothing changed on disk: a second reload says so for the root, and reopens the log again.
    await reload(server);
    await getText(server.ports[0], "hello.txt");
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const rotated = await Deno.readTextFile(`${file}.1`);
  const fresh = await Deno.readTextFile(file);
  assert.match(rotated, /request=GET "hello\.txt"/);
  assert.doesNotMatch(rotated, /readme/, "nothing was written to the renamed file after the reload");
  assert.match(fresh, /request=GET "docs\/readme\.txt"[^\n]*\n[^\n]*request=GET "hello\.txt"/);
  assert.ok(server.log.some((l) => /worker=\d reloaded: request log: .* reopened$/.test(l)));
  assert.ok(!server.log.some((l) => /exited with|is gone/.test(l)));
});

Deno.test("a reload whose root no longer exists keeps serving the old one and says why", async () => {
  await using dir = await tempDir();
  const { current } = await releases(dir.path);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", current, "--workers", "1"]);
  try {
    await Deno.remove(current);
    await reload(server);
    assert.equal(await getText(server.ports[0], "name.txt"), "release 1\n");
    assert.ok(
      server.log.some((l) => /worker=1 reloaded: root: FAILED, kept as it was: openat2: ENOENT/.test(l)),
    );
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("--pid-file holds the master's pid while it serves and is removed when it exits", async () => {
  await using dir = await tempDir();
  const pidFile = `${dir.path}/ferry.pid`;
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    "demo",
    "--workers",
    "1",
    "--pid-file",
    pidFile,
  ]);
  try {
    assert.equal(await Deno.readTextFile(pidFile), `${server.pid}\n`);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  await assert.rejects(Deno.stat(pidFile), Deno.errors.NotFound);
});

Deno.test("--version: the server and the client print the one version and exit 0", async () => {
  const server = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("server.ts"), "--version"],
    stdin: "null",
  }).output();
  const client = await runClient(["--version"]);
  assert.equal(server.code, 0);
  assert.equal(client.code, 0);
  const deno = `(deno ${Deno.version.deno})`;
  assert.equal(new TextDecoder().decode(server.stdout), `ferry-server ${FERRY_VERSION} ${deno}\n`);
  assert.equal(new TextDecoder().decode(client.stdout), `ferry ${FERRY_VERSION} ${deno}\n`);
});
