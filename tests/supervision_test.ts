/**
 * Supervision: workers that die are respawned, SIGTERM lets transfers in flight finish, and no worker
 * outlives its master. Real processes and signals; progress is observed, never waited for by the clock.
 */

import assert from "node:assert/strict";
import {
  childPids,
  eventually,
  isAlive,
  listeningInodes,
  makeFile,
  RawConnection,
  repoPath,
  runClient,
  sha256,
  sha256File,
  socketInodes,
  sparseFile,
  startServer,
  tempDir,
} from "./helpers.ts";

const MiB = 1024 * 1024;

/** Names in a directory, sorted. */
async function listDir(path: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(path)) names.push(entry.name);
  return names.sort();
}

/** Size of the client's temporary file for `name` in `dir`, or -1 if there is none. */
async function partSize(dir: string, name: string): Promise<number> {
  for (const entry of await listDir(dir)) {
    if (entry.startsWith(`.${name}.ferry-`) && entry.endsWith(".part")) {
      try {
        return (await Deno.stat(`${dir}/${entry}`)).size;
      } catch { /* renamed or removed meanwhile */ }
    }
  }
  return -1;
}

/** Opens a connection, requests `path`, reads the header: the transfer is then in flight. */
async function startTransfer(port: number, path: string): Promise<{ conn: RawConnection; size: number }> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest({ op: "get", path });
    const header = await conn.readFrame();
    assert.ok(header !== null && header.length > 0);
    assert.equal(String.fromCharCode(header.payload[0]), "H");
    const json = JSON.parse(new TextDecoder().decode(header.payload.subarray(1)));
    return { conn, size: json.size };
  } catch (e) {
    conn.close();
    throw e;
  }
}

Deno.test("a worker killed mid-transfer fails that client cleanly, is respawned, and the next clients succeed", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  await sparseFile(src.path, "huge.bin", 4 * 1024 * MiB);
  const expected = await sha256File(await makeFile(src.path, "small.bin", 300_000));
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  const address = `127.0.0.1:${server.ports[0]}`;
  try {
    const [worker] = await childPids(server.pid);
    assert.ok(worker > 0);
    const client = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        repoPath("client.ts"),
        "get",
        address,
        "huge.bin",
        "-o",
        `${out.path}/huge.bin`,
        "--retries", // without retries: the client would resume the transfer from its part and succeed
        "0",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const result = client.output();
    try {
      await eventually(
        "the client has written part of the file",
        async () => await partSize(out.path, "huge.bin") > 0,
      );
    } catch (e) {
      client.kill("SIGKILL");
      await result;
      throw e;
    }
    // Frozen, the client cannot finish first: the worker dies in the middle of the transfer.
    client.kill("SIGSTOP");
    Deno.kill(worker, "SIGKILL");
    client.kill("SIGCONT");
    const { code, stderr } = await result;
    const message = new TextDecoder().decode(stderr);
    assert.equal(code, 6, message); // ExitCode.Protocol: the answer ended early
    assert.match(message, /^ferry: protocol error: connection/);
    assert.equal(message.trim().split("\n").length, 1, message);
    // The target is not there; the part is kept (named after the file's etag) for the next run to resume.
    const left = await listDir(out.path);
    assert.equal(left.length, 1, `only the part is left: ${left}`);
    assert.match(left[0], /^\.huge\.bin\.ferry-[0-9a-f]+\.part$/);

    assert.match(await server.waitForLog(/worker 1 is gone .*respawning/), new RegExp(`pid ${worker}\\b`));
    await eventually(
      "a new worker runs",
      async () => (await childPids(server.pid)).some((p) => p !== worker),
    );
    assert.equal(await isAlive(worker), false);

    for (let i = 0; i < 3; i++) {
      const r = await runClient(["get", address, "small.bin", "-o", `${out.path}/small-${i}.bin`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await sha256File(`${out.path}/small-${i}.bin`), expected);
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("on SIGTERM the transfer in flight completes, new connections are refused, and the server exits 0", async () => {
  await using dir = await tempDir();
  const size = 64 * MiB + 777;
  const expected = await sha256File(await makeFile(dir.path, "big.bin", size));
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "2"]);
  const port = server.ports[0];
  let conn: RawConnection | null = null;
  try {
    const workers = await childPids(server.pid);
    assert.equal(workers.length, 2);
    const listening = await listeningInodes();
    const listeners = [...await socketInodes(server.pid)].filter((i) => listening.has(i));
    assert.equal(listeners.length, 1, "the master holds one listening socket");

    const started = await startTransfer(port, "big.bin");
    conn = started.conn;
    assert.equal(started.size, size);
    // The first bytes of the first data frame: the transfer is under way.
    const head = await conn.readBytes(4 + 1 + 100);
    assert.ok(head !== null);
    const firstLength = new DataView(head.buffer).getInt32(0, true);
    assert.equal(String.fromCharCode(head[4]), "D");

    server.kill("SIGTERM");
    await server.waitForLog(/SIGTERM: no longer accepting/);
    await eventually(
      "the listening socket is closed",
      async () => !(await listeningInodes()).has(listeners[0]),
    );
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }), Deno.errors.ConnectionRefused);

    const rest = await conn.readBytes(firstLength - 1 - 100);
    assert.ok(rest !== null);
    const response = await conn.readResponse();
    assert.match(response.types, /^D*T?$/);
    const data = new Uint8Array(size);
    data.set(head.subarray(5), 0);
    data.set(rest, 100);
    assert.equal(100 + rest.byteLength + response.data.byteLength, size, "every byte arrives");
    data.set(response.data, 100 + rest.byteLength);
    assert.equal(sha256(data), expected);
    conn.close();
    conn = null;

    assert.equal((await server.process.status).code, 0);
    for (const pid of workers) assert.equal(await isAlive(pid), false, `worker ${pid} is gone`);
  } finally {
    conn?.close();
    await server.stop();
  }
});

Deno.test("when the master is SIGKILLed every worker exits by itself, even one with a transfer in flight", async () => {
  await using dir = await tempDir();
  await sparseFile(dir.path, "big.bin", 256 * MiB);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "3"]);
  let conn: RawConnection | null = null;
  try {
    const workers = await childPids(server.pid);
    assert.equal(workers.length, 3);
    conn = (await startTransfer(server.ports[0], "big.bin")).conn;
    server.kill("SIGKILL");
    assert.equal((await server.process.status).signal, "SIGKILL");
    for (const pid of workers) {
      await eventually(`worker ${pid} exits`, async () => !await isAlive(pid));
    }
  } finally {
    conn?.close();
    await server.stop();
  }
});

Deno.test("a connection queued when a worker dies is still served in full", async () => {
  await using dir = await tempDir();
  await sparseFile(dir.path, "big.bin", 256 * MiB);
  const expected = await sha256File(await makeFile(dir.path, "small.bin", 500_000));
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--workers",
    "2",
    "--conns-per-worker",
    "1",
  ]);
  const conns: RawConnection[] = [];
  try {
    const workers = await childPids(server.pid);
    for (let i = 0; i < 2; i++) conns.push((await startTransfer(server.ports[0], "big.bin")).conn);
    const waiting = await RawConnection.open(server.ports[0]);
    conns.push(waiting);
    await waiting.sendRequest({ op: "get", path: "small.bin" });
    const answer = waiting.readResponse();
    Deno.kill(workers[0], "SIGKILL");
    await server.waitForLog(/is gone .*respawning/);
    const response = await answer;
    assert.match(response.types, /^HDT?$/);
    assert.equal(sha256(response.data), expected);
  } finally {
    for (const c of conns) c.close();
    assert.equal((await server.stop()).code, 0);
  }
});
