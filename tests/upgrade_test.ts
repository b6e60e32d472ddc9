/**
 * Upgrade without refusing a connection (SIGUSR2): the master starts a new master from the program on
 * disk and hands it the listening sockets; once the new one serves, the old one drains and exits 0.
 * Clients connecting in a loop all the while see no refused or failed connection, and afterwards only the
 * new master's workers answer.
 */
import assert from "node:assert/strict";
import { childPids, isAlive, RawConnection, socketInodes, startServer, tempDir } from "./helpers.ts";

/** Connections made one after the other until `stop()` is true; counts those answered and those failed. */
async function pingLoop(port: number, stop: () => boolean): Promise<{ ok: number; failed: string[] }> {
  const result = { ok: 0, failed: [] as string[] };
  while (!stop()) {
    let conn: RawConnection | null = null;
    try {
      conn = await RawConnection.open(port);
      await conn.sendRequest({ op: "get", path: "hello.txt" });
      const { types } = await conn.readResponse();
      if (types.startsWith("H")) result.ok++;
      else result.failed.push(`answered ${types}`);
    } catch (e) {
      result.failed.push((e as Error).message);
    } finally {
      conn?.close();
    }
  }
  return result;
}

/** The local inode of the server's side of a connection from `clientPort` to `port`, from /proc/net/tcp. */
async function serverSideInode(port: number, clientPort: number): Promise<string | undefined> {
  const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, "0");
  const lines = (await Deno.readTextFile("/proc/net/tcp")).trim().split("\n").slice(1);
  for (const line of lines) {
    const cols = line.trim().split(/\s+/);
    if (cols[1].endsWith(`:${hex(port)}`) && cols[2].endsWith(`:${hex(clientPort)}`)) return cols[9];
  }
  return undefined;
}

Deno.test("SIGUSR2 upgrades with clients in a loop: none refused or failed; then the new master answers", async () => {
  await using dir = await tempDir();
  const pidFile = `${dir.path}/ferry.pid`;
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    "demo",
    "--workers",
    "2",
    "--grace",
    "5",
    "--pid-file",
    pidFile,
  ]);
  const port = server.ports[0];
  let newPid = 0;
  try {
    let oldGone = false;
    // Loops go on until the old master has exited and each made 31 connections to the new one: a count of
    // its own, so that a loop the scheduler held back still makes its share.
    const loops = Array.from({ length: 3 }, () => {
      let afterwards = 0;
      return pingLoop(port, () => oldGone && afterwards++ > 30);
    });
    const logFrom = server.log.length;
    server.kill("SIGUSR2");
    const started = await server.waitForLog(/SIGUSR2: started a new master \(pid \d+\)/, logFrom);
    newPid = Number(/pid (\d+)/.exec(started)![1]);
    await server.waitForLog(new RegExp(`master\\[${newPid}\\]: told the old master`), logFrom);
    const oldStatus = await server.process.status;
    oldGone = true;
    const results = await Promise.all(loops);

    assert.equal(oldStatus.code, 0, "the old master drained and exited 0");
    assert.deepEqual(results.flatMap((r) => r.failed), [], "no connection refused or failed");
    assert.ok(results.every((r) => r.ok > 30));
    assert.equal(await Deno.readTextFile(pidFile), `${newPid}\n`, "the pid file names the new master");
    assert.ok(
      server.log.some((l) => new RegExp(`master\\[${newPid}\\]: ferry-server \\S+ .*pid ${newPid}`).test(l)),
    );
    assert.ok(server.log.some((l) => l.includes(`master[${server.pid}]: upgrade: the new master serves`)));

    // A connection now is served by one of the new master's workers.
    const conn = await RawConnection.open(port);
    try {
      await conn.sendRequest({ op: "ping" });
      await conn.readResponse();
      const workers = await childPids(newPid);
      assert.equal(workers.length, 2);
      const inode = await serverSideInode(port, conn.localPort);
      assert.ok(inode !== undefined);
      const held = await Promise.all(workers.map((w) => socketInodes(w)));
      assert.ok(held.some((set) => set.has(inode)), "one of the new master's workers holds the connection");
    } finally {
      conn.close();
    }
  } finally {
    if (newPid !== 0 && await isAlive(newPid)) Deno.kill(newPid, "SIGTERM");
    await server.stop(); // waits until every process that shares its stderr (the new master too) is gone
  }
  assert.ok(server.log.some((l) => l.includes(`master[${newPid}]: stopped`)));
  await assert.rejects(Deno.stat(pidFile), Deno.errors.NotFound, "the new master removed its pid file");
});

Deno.test("SIGUSR2 when the new master cannot start serving: the old one says so and serves on", async () => {
  await using dir = await tempDir();
  await Deno.mkdir(`${dir.path}/tree`);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    `${dir.path}/tree`,
    "--workers",
    "1",
  ]);
  try {
    // The new master finds no root where its command line says (exit 2), so it never serves.
    await Deno.remove(`${dir.path}/tree`);
    const from = server.log.length;
    server.kill("SIGUSR2");
    await server.waitForLog(/exited before it was ready; serving on/, from);
    assert.ok(server.log.some((l) => /--root: .* is not a directory/.test(l)));
    const conn = await RawConnection.open(server.ports[0]);
    try {
      await conn.sendRequest({ op: "ping" });
      assert.match((await conn.readResponse()).types, /^H/);
    } finally {
      conn.close();
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});
