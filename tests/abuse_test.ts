/**
 * Staying available under abuse: the open-file limit reached, errors followed by endless bodies, silent
 * connections, slow and idle floods. Real server processes (one under prlimit(1)), real sockets on
 * loopback; what the server does is observed from outside (its answers, its log, /proc), never timed.
 */

import assert from "node:assert/strict";
import {
  childPids,
  eventually,
  getOnce,
  isAlive,
  makeFile,
  mountTmpfs,
  openFds,
  RawConnection,
  runClient,
  samples,
  scrape,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";

/** Opens `count` connections to `port` and sends `first` on each; all are open when it resolves. */
async function openMany(port: number, count: number, first: Uint8Array): Promise<RawConnection[]> {
  const conns: RawConnection[] = [];
  try {
    for (let i = 0; i < count; i += 50) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(50, count - i) }, () => RawConnection.open(port)),
      );
      conns.push(...batch);
      await Promise.all(batch.map((c) => c.send(first)));
    }
    return conns;
  } catch (e) {
    for (const c of conns) c.close();
    throw e;
  }
}

/** Fails with `what` instead of hanging when `promise` takes longer than a generous minute. */
async function hangGuard<T>(what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within 60 s: ${what}`)), 60_000);
  });
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
  }
}

/** The first two bytes of a frame's length: a request begun and never finished. */
const HALF_A_LENGTH = new Uint8Array([40, 0]);

Deno.test("with the open-file limit reached no worker dies, the master answers BUSY rather than drop, a new client is answered, and once the clients leave the server serves again", async () => {
  await using dir = await tempDir();
  const okBytes = await Deno.readFile(await makeFile(dir.path, "ok.bin", 4096));
  const server = await startServer(
    ["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "2", "--request-log", "off"],
    { command: "prlimit", args: ["--nofile=64:64", Deno.execPath()] },
  );
  const port = server.ports[0];
  let flood: RawConnection[] = [];
  try {
    const workers = await childPids(server.pid);
    assert.equal(workers.length, 2);
    const fdsBefore = (await openFds(server.pid)).size;
    flood = await openMany(port, 300, HALF_A_LENGTH);
    await hangGuard(
      "the master refuses a connection for want of fds",
      server.waitForLog(/refused: no file descriptor free/),
    );
    const extra = await RawConnection.open(port);
    try {
      await extra.sendRequest({ op: "ping" });
      // While no fd is free the master answers BUSY from its reserve; one freed meanwhile (a hand-off done)
      // lets it serve the ping instead. Either way the client is answered, never dropped or left hanging.
      const answer = await extra.readResponse();
      if (answer.types === "E") {
        assert.equal(answer.json[0].code, "BUSY", JSON.stringify(answer.json[0]));
        assert.ok(await extra.isClosedByPeer());
      } else {
        assert.equal(answer.types, "H", `frames '${answer.types}'`);
      }
    } finally {
      extra.close();
    }
    for (const c of flood.splice(0)) c.close();
    await eventually(
      "the master holds no more fds than before the flood",
      async () => (await openFds(server.pid)).size <= fdsBefore,
    );
    const r = await getOnce(port, { path: "ok.bin" });
    assert.equal(r.types[0], "H", `a get is answered: frames '${r.types}' ${JSON.stringify(r.json)}`);
    assert.deepEqual(r.data, okBytes);
    for (const pid of workers) assert.ok(await isAlive(pid), `worker ${pid} is still alive`);
    assert.deepEqual(server.log.filter((l) => /is gone|cannot start|channel error/.test(l)), []);
  } finally {
    for (const c of flood) c.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a client that sends its request a byte at a time gets TIMEOUT once --idle-timeout has passed, though every byte came well within it", async () => {
  await using dir = await tempDir();
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--workers",
    "1",
    "--idle-timeout",
    "1",
  ]);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    // 80 bytes at one per 100 ms: eight times the timeout to send it all, a tenth of it between bytes.
    const json = JSON.stringify({ v: 1, op: "ping", pad: "x".repeat(40) });
    const bytes = new Uint8Array(4 + 1 + json.length);
    new DataView(bytes.buffer).setInt32(0, 1 + json.length, true);
    bytes[4] = 0x52;
    bytes.set(new TextEncoder().encode(json), 5);
    let answered = false;
    const answer = conn.readResponse().finally(() => answered = true);
    // Settled while bytes still go out: a failure is the await's below, not an unhandled rejection.
    answer.catch(() => {});
    let sent = 0;
    for (; sent < bytes.byteLength - 1 && !answered; sent++) {
      await conn.send(bytes.subarray(sent, sent + 1)).catch(() => {});
      await new Promise((r) => setTimeout(r, 100)); // the slow client's pace, not a synchronisation
    }
    const r = await answer.catch((e) => {
      throw new Error(`${(e as Error).message}; the server's log:\n${server.log.join("\n")}`);
    });
    assert.equal(r.json[0].code, "TIMEOUT", JSON.stringify(r.json[0]));
    assert.ok(sent < bytes.byteLength - 1, "the answer came while the client was still sending");
  } finally {
    conn.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("on a full disk get exits 8, leaves the target alone, removes its part, and says how many bytes the file needs", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  const size = 6 * 1024 * 1024;
  await makeFile(src.path, "big.bin", size);
  if (!await mountTmpfs(out.path, "4m")) {
    console.warn("abuse_test: cannot mount a tmpfs here (needs root): the full-disk test is skipped");
    return;
  }
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    await Deno.writeTextFile(`${out.path}/big.bin`, "the old copy\n");
    const address = `127.0.0.1:${server.ports[0]}`;
    for (let run = 0; run < 2; run++) { // the second run finds the disk as empty as the first did
      const r = await runClient(["get", address, "big.bin", "-o", `${out.path}/big.bin`]);
      assert.equal(r.code, 8, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(`no space left on the device \\(ENOSPC\\): the file needs ${size} bytes`),
      );
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      const left = [];
      for await (const entry of Deno.readDir(out.path)) left.push(entry.name);
      assert.deepEqual(left, ["big.bin"], "no part is left");
      assert.equal(await Deno.readTextFile(`${out.path}/big.bin`), "the old copy\n");
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
    await new Deno.Command("umount", { args: [out.path] }).output();
  }
});

Deno.test("connections waiting for their request hold no worker slot: with 200 slow or silent clients on a worker of 2 slots, a ping and a get are answered", async () => {
  await using dir = await tempDir();
  const okBytes = await Deno.readFile(await makeFile(dir.path, "ok.bin", 4096));
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--workers",
    "1",
    "--conns-per-worker",
    "2",
    "--idle-timeout",
    "120", // far beyond the hang guard: the waiting clients are not timed out meanwhile
    "--request-log",
    "off",
  ]);
  const port = server.ports[0];
  let flood: RawConnection[] = [];
  try {
    flood = [
      ...await openMany(port, 100, HALF_A_LENGTH), // a request begun, never finished
      ...await openMany(port, 100, new Uint8Array(0)), // nothing at all
    ];
    const conn = await RawConnection.open(port);
    try {
      await conn.sendRequest({ op: "ping" });
      const pong = await hangGuard("a ping is answered", conn.readResponse());
      assert.equal(pong.types, "H", JSON.stringify(pong.json));
      await conn.sendRequest({ op: "get", path: "ok.bin" });
      const got = await hangGuard("a get is answered", conn.readResponse());
      assert.deepEqual(got.data, okBytes);
    } finally {
      conn.close();
    }
  } finally {
    for (const c of flood) c.close();
    assert.equal((await server.stop()).code, 0);
  }
});

/** Where silent connections are, by the server's gauges: held by the master, or open on worker 1. */
interface Whereabouts {
  master: number;
  worker: number;
  busyNoFd: number;
}

/** A server of one worker over `root` with a metrics listener, and a reader of {@link Whereabouts}. */
async function startWatched(
  root: string,
  extra: string[],
  wrap?: { command: string; args: string[] },
): Promise<{ server: TestServer; where: () => Promise<Whereabouts> }> {
  const args = ["--listen", "127.0.0.1:0", "--root", root, "--workers", "1", "--request-log", "off"];
  const server = await startServer([...args, "--metrics-listen", "127.0.0.1:0", ...extra], wrap);
  const metricsPort = Number(/:(\d+)\/metrics/.exec(await server.waitForLog(/serving metrics at/))![1]);
  const where = async () => {
    const s = samples((await scrape(metricsPort)).body);
    return {
      master: s.get("ferry_connections_awaiting_request") ?? 0,
      worker: s.get('ferry_connections_open{worker="1"}') ?? 0,
      busyNoFd: s.get('ferry_busy_total{reason="no_fd"}') ?? 0,
    };
  };
  return { server, where };
}

Deno.test("a connection whose client has sent nothing waits in the master: no worker hears of it until its first byte, and silence past --idle-timeout gets TIMEOUT", async () => {
  await using dir = await tempDir();
  const { server, where } = await startWatched(dir.path, ["--idle-timeout", "3"]);
  const silent = await openMany(server.ports[0], 20, new Uint8Array(0));
  try {
    // The kernel holds a silent connection for its accept deferral (1 s), then the master accepts it.
    await eventually("the master holds the 20 silent connections", async () => (await where()).master === 20);
    assert.deepEqual(await where(), { master: 20, worker: 0, busyNoFd: 0 });

    const [speaking, ...others] = silent;
    await speaking.sendRequest({ op: "ping" });
    const pong = await hangGuard("a ping on a connection that waited", speaking.readResponse());
    assert.equal(pong.types, "H", JSON.stringify(pong.json));
    assert.equal((await where()).master, 19);

    const timedOut = await hangGuard("a silent connection is closed", others[0].readResponse());
    assert.equal(timedOut.json[0].code, "TIMEOUT");
    assert.match(timedOut.json[0].message as string, /no complete request within 3s/);
    await eventually("every silent connection is closed", async () => (await where()).master === 0);
  } finally {
    for (const c of silent) c.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("the master holds silent connections only while it uses less than half its open-file limit; the others go to a worker", async () => {
  await using dir = await tempDir();
  const { server, where } = await startWatched(dir.path, [], {
    command: "prlimit",
    args: ["--nofile=128:128", Deno.execPath()],
  });
  const silent = await openMany(server.ports[0], 80, new Uint8Array(0));
  try {
    await eventually("all 80 silent connections are accepted", async () => {
      const { master, worker } = await where();
      return master + worker === 80;
    });
    const { master, worker, busyNoFd } = await where();
    // The master's own fds (runtime, epoll, listeners, channel, reserve) take some of the 64 below the ceiling.
    assert.ok(master > 0 && master < 64, `${master} held by the master`);
    assert.equal(worker, 80 - master, "the others went to the worker");
    assert.equal(busyNoFd, 0, "none refused for want of fds");
  } finally {
    for (const c of silent) c.close();
    assert.equal((await server.stop()).code, 0);
  }
});
