/**
 * File descriptor hygiene, read from /proc: workers inherit nothing but their own channel end, and a
 * thousand connections (good, malformed and abandoned) leave no fd behind in any process.
 */

import assert from "node:assert/strict";
import {
  childPids,
  eventually,
  listeningInodes,
  makeFile,
  openFds,
  RawConnection,
  sha256,
  sha256File,
  socketInodes,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import { parseWorkerArgs } from "../channel/worker_args.ts";

function intersection(a: Set<string>, b: Set<string>): string[] {
  return [...a].filter((x) => b.has(x));
}

/** The fd a worker was told is its channel, from its command line. */
async function channelFdOf(pid: number): Promise<number> {
  const argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
  const at = argv.indexOf("--worker-config");
  assert.ok(at >= 0, `worker ${pid} has --worker-config`);
  return parseWorkerArgs(argv.slice(at, at + 2)).channelFd;
}

Deno.test("workers hold no listening socket, no master-side channel end and no other worker's channel", async () => {
  await using dir = await tempDir();
  const pushed = await makeFile(dir.path, "pushed.bin", 1000);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--push-listen",
    "127.0.0.1:0",
    "--push",
    pushed,
    "--workers",
    "3",
  ]);
  try {
    const listening = await listeningInodes();
    const master = await socketInodes(server.pid);
    assert.equal(intersection(master, listening).length, 2, "the master holds both listening sockets");
    const workers = await childPids(server.pid);
    assert.equal(workers.length, 3);
    const seen = new Set<string>();
    for (const pid of workers) {
      const sockets = await socketInodes(pid);
      assert.deepEqual(intersection(sockets, listening), [], `worker ${pid} holds no listening socket`);
      assert.deepEqual(intersection(sockets, master), [], `worker ${pid} shares no socket with the master`);
      assert.deepEqual(intersection(sockets, seen), [], `worker ${pid} holds no other worker's socket`);
      const channel = (await openFds(pid)).get(await channelFdOf(pid));
      const inode = /^socket:\[(\d+)\]$/.exec(channel ?? "")?.[1];
      assert.ok(inode !== undefined, `worker ${pid}'s channel fd is a socket (${channel})`);
      assert.equal(master.has(inode), false, "the worker's end is not the master's end");
      for (const s of sockets) seen.add(s);
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

/** Every fd of `pid` as "number -> target" lines, sorted. */
async function fdTable(pid: number): Promise<string[]> {
  return [...(await openFds(pid)).entries()].map(([fd, target]) => `${fd} -> ${target}`).sort();
}

/** One connection of the mix; `i` picks the kind. Each checks what it gets and closes its connection. */
async function oneConnection(server: TestServer, i: number, smallSha: string): Promise<void> {
  const conn = await RawConnection.open(server.ports[0]);
  try {
    switch (i % 6) {
      case 0: { // a good request, read to the end
        await conn.sendRequest({ op: "get", path: "small.bin" });
        const r = await conn.readResponse();
        assert.match(r.types, /^HDT?$/, "header, data, and the hash trailer unless the header had it");
        assert.equal(sha256(r.data), smallSha);
        break;
      }
      case 1: { // a ping, then an end frame: the server closes
        await conn.sendRequest({ op: "ping" });
        assert.equal((await conn.readResponse()).types, "H");
        await conn.send(new Uint8Array(4));
        assert.equal(await conn.isClosedByPeer(), true);
        break;
      }
      case 2: { // malformed JSON
        await conn.send(new Uint8Array([6, 0, 0, 0, 0x52, 0x7b, 0x6e, 0x6f, 0x70, 0x65]));
        const r = await conn.readResponse();
        assert.equal(r.types, "E");
        assert.equal(r.json[0].code, "BAD_REQUEST");
        assert.equal(await conn.isClosedByPeer(), true);
        break;
      }
      case 3: { // a length out of range
        await conn.send(new Uint8Array([0xff, 0xff, 0xff, 0x7f]));
        const r = await conn.readResponse();
        assert.equal(r.json[0].code, "TOO_LARGE");
        assert.equal(await conn.isClosedByPeer(), true);
        break;
      }
      case 4: // connected, then gone without a word
        break;
      case 5: { // a large file requested, a little read, then abandoned
        await conn.sendRequest({ op: "get", path: "big.bin" });
        assert.equal((await conn.readFrame())?.payload[0], 0x48);
        break;
      }
    }
  } finally {
    conn.close();
  }
}

Deno.test("after 1000 connections, good, malformed and abandoned, no process holds more fds than before", async () => {
  await using dir = await tempDir();
  const smallSha = await sha256File(await makeFile(dir.path, "small.bin", 20_000));
  await Deno.writeFile(`${dir.path}/big.bin`, new Uint8Array(0));
  await Deno.truncate(`${dir.path}/big.bin`, 64 * 1024 * 1024);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "3"]);
  try {
    const workers = await childPids(server.pid);
    assert.equal(workers.length, 3);
    const before = new Map<number, string[]>();
    for (const pid of [server.pid, ...workers]) before.set(pid, await fdTable(pid));

    let next = 0;
    const total = 1000;
    const lanes = Array.from({ length: 20 }, async () => {
      while (next < total) await oneConnection(server, next++, smallSha);
    });
    await Promise.all(lanes);

    for (const [pid, table] of before) {
      await eventually(`process ${pid} is back to ${table.length} fds`, async () => {
        const now = await fdTable(pid);
        return now.length === table.length && now.every((line, i) => line === table[i]);
      });
    }
    assert.deepEqual(await childPids(server.pid), workers, "no worker died on the way");
    assert.equal((await server.stop()).code, 0);
    // Once the server has exited its whole log is in: one line per good request.
    const served = server.log.filter((l) => /request=GET "small.bin" .*result=ok/.test(l)).length;
    assert.equal(served, Math.ceil(total / 6));
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});
