/**
 * The client's protocol-v1 behaviour against a real server: resume after a cut (worker killed, client
 * killed), restart when the remote file changed, SHA-256 verification of corrupted data, only-if-changed,
 * retries on BUSY, --timeout, --lock, --json, and the progress bar. Where a cut or a corruption must
 * happen at a known point, a proxy in the test (tests/proxy.ts) holds or alters the data in flight;
 * processes are killed only once the part file on disk shows they are where the test wants them.
 */

import assert from "node:assert/strict";
import { ExitCode, worstExitCode } from "../client/failure.ts";
import { formatBytes, formatDuration, renderProgress } from "../client/progress.ts";
import { LocalDir } from "../client/local_tree.ts";
import { AtomicFile, PartLockedError } from "../client/publish.ts";
import { backoffDelay, withRetries } from "../client/retry.ts";
import { Session } from "../client/session.ts";
import {
  allJsonLines,
  getArgs,
  jsonLines,
  listDir,
  logged,
  spawnClient,
  withServer,
} from "./client_fixture.ts";
import {
  childPids,
  eventually,
  makeFile,
  RawConnection,
  repoPath,
  runClient,
  sha256,
  sha256File,
  sparseFile,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import { FrameProxy } from "./proxy.ts";
import { DATA_FRAME_PAYLOAD } from "../framing.ts";
import { statAt } from "../ffi/libc.ts";

const MiB = 1024 * 1024;
const BIG = 100 * MiB;

/** The part files of `name` in `dir`. */
async function parts(dir: string, name: string): Promise<string[]> {
  return (await listDir(dir)).filter((n) => n.startsWith(`.${name}.ferry-`) && n.endsWith(".part"));
}

/** Size of the one part of `name` in `dir`, or -1 if there is none. */
async function partSize(dir: string, name: string): Promise<number> {
  const [part] = await parts(dir, name);
  if (part === undefined) return -1;
  return await Deno.stat(`${dir}/${part}`).then((s) => s.size, () => -1);
}

/** Waits until the part of `name` holds exactly `size` bytes: the client has written all it was given. */
async function partReaches(dir: string, name: string, size: number): Promise<void> {
  await eventually(`the part of ${name} holds ${size} bytes`, async () => await partSize(dir, name) === size);
}

/** The server's log lines for GET requests of `name` (a plain file name), once there are `count`. */
function getLines(server: TestServer, name: string, count: number): Promise<string[]> {
  return logged(server, new RegExp(`request=GET "${name.replaceAll(".", "\\.")}"`), count);
}

/** The `bytes=` of a log line. */
function loggedBytes(line: string): number {
  return Number(/ bytes=(\d+) /.exec(line)![1]);
}

/** Runs a get through a proxy holding the data after `holdAt` bytes, and SIGKILLs the client there. */
async function killClientMidTransfer(
  port: number,
  name: string,
  out: string,
  holdAt: number,
): Promise<FrameProxy> {
  const proxy = new FrameProxy(port, { hold: { connection: 0, bytes: holdAt } });
  try {
    const before = Math.max(0, await partSize(out, name));
    const client = spawnClient(getArgs(proxy.address, name, out));
    await proxy.held;
    await partReaches(out, name, before + proxy.connections[0].dataBytes);
    client.process.kill("SIGKILL");
    assert.notEqual((await client.done).code, 0);
    return proxy;
  } finally {
    await proxy.close();
  }
}

Deno.test("a connection cut by a killed worker is resumed within the run from the part, without re-fetching its bytes", async () => {
  await withServer(async ({ src, out, server }) => {
    const expected = await sha256File(await makeFile(src, "big.bin", BIG));
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 20 * MiB } });
    try {
      const client = spawnClient(getArgs(proxy.address, "big.bin", out, "--json"));
      await proxy.held;
      await partReaches(out, "big.bin", proxy.connections[0].dataBytes);
      const [worker] = await childPids(server.pid);
      Deno.kill(worker, "SIGKILL");
      proxy.release(); // what the dead worker had sent still arrives, then the connection ends mid-frame
      const r = await client.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await sha256File(`${out}/big.bin`), expected);
      assert.deepEqual(await listDir(out), ["big.bin"], "the part became the target");

      // The retry asked for the rest of the version it holds, and got only the rest.
      const [report] = jsonLines(r);
      assert.equal(report.attempts, 2);
      const resumed = proxy.connections[1].requests[0];
      const cutAt = resumed.offset as number;
      assert.ok(cutAt >= 20 * MiB && cutAt < BIG, `resumed at ${cutAt}`);
      assert.equal(resumed.ifMatch, proxy.connections[0].controls[0].body.etag);
      assert.equal(proxy.connections[1].controls[0].body.offset, cutAt);
      assert.equal(proxy.connections[1].dataBytes, BIG - cutAt);
      assert.equal(report.resumedFrom, cutAt);
      assert.equal(report.bytes, proxy.connections[0].dataBytes + proxy.connections[1].dataBytes);
      const [line] = await logged(server, new RegExp(`GET "big\\.bin" offset=${cutAt} .*result=ok`));
      assert.ok(loggedBytes(line) < BIG - cutAt + 1024, line);
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("a client killed twice mid-transfer is resumed by the next runs: byte-identical, held bytes never fetched again", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const expected = await sha256File(await makeFile(src, "big.bin", BIG));
    const cuts: number[] = [];
    for (const holdAt of [10 * MiB, 40 * MiB]) {
      const proxy = await killClientMidTransfer(server.ports[0], "big.bin", out, holdAt);
      assert.equal(proxy.connections[0].requests[0].offset, cuts.at(-1), "each run asks for what it lacks");
      cuts.push(await partSize(out, "big.bin"));
    }
    assert.ok(cuts[0] >= 10 * MiB && cuts[1] > cuts[0] && cuts[1] < BIG, `parts after the kills: ${cuts}`);
    await assert.rejects(Deno.stat(`${out}/big.bin`), Deno.errors.NotFound, "no target before the end");

    const r = await runClient(getArgs(address, "big.bin", out));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`done: ${BIG} bytes .*resumed at byte ${cuts[1]}`));
    assert.equal(await sha256File(`${out}/big.bin`), expected);
    assert.deepEqual(await listDir(out), ["big.bin"]);
    // Three requests: from 0, from the first cut, from the second; the last one sent only the rest.
    const lines = await getLines(server, "big.bin", 3);
    assert.equal(lines.length, 3, lines.join("\n"));
    assert.match(lines[1], new RegExp(`offset=${cuts[0]}\\b`));
    assert.match(lines[2], new RegExp(`offset=${cuts[1]}\\b`));
    assert.ok(loggedBytes(lines[2]) < BIG - cuts[1] + 1024, lines[2]);
  });
});

Deno.test("a remote file replaced between an interrupted run and the next: the client restarts and publishes the new file whole", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await makeFile(src, "big.bin", BIG);
    await killClientMidTransfer(server.ports[0], "big.bin", out, 10 * MiB);
    const [stalePart] = await parts(out, "big.bin");
    // The new version: other bytes, same size, put in place by rename as a deployment would.
    await Deno.mkdir(`${src}/staging`);
    const fresh = await makeFile(`${src}/staging`, "big.bin", BIG);
    const bytes = await Deno.readFile(fresh);
    bytes[0] ^= 0x5a;
    bytes[BIG - 1] ^= 0x5a;
    await Deno.writeFile(fresh, bytes);
    await Deno.rename(fresh, `${src}/big.bin`);

    const r = await runClient(getArgs(address, "big.bin", out));
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /resumed/);
    assert.equal(await sha256File(`${out}/big.bin`), sha256(bytes), "the new version, not a mix");
    assert.deepEqual(await listDir(out), ["big.bin"], `the stale part ${stalePart} is gone`);
    const lines = await getLines(server, "big.bin", 3);
    assert.match(lines[1], /offset=\d+ .*result=refused CHANGED/);
    assert.doesNotMatch(lines[2], /offset=/);
    assert.ok(loggedBytes(lines[2]) >= BIG, lines[2]);
  });
});

Deno.test("data corrupted in flight fails the SHA-256 check: exit 7, target untouched, part removed; a retry fetches it clean", async () => {
  await withServer(async ({ src, out, server }) => {
    const expected = await sha256File(await makeFile(src, "f.bin", 3 * MiB + 5));
    await Deno.writeTextFile(`${out}/f.bin`, "the old content");
    const proxy = new FrameProxy(server.ports[0], { corrupt: { connection: 0, dataByte: 2 * MiB } });
    try {
      const r = await runClient(getArgs(proxy.address, "f.bin", out, "--retries", "0"));
      assert.equal(r.code, 7, r.stderr);
      assert.match(
        r.stderr,
        /^ferry: SHA-256 mismatch for "f\.bin": received [0-9a-f]{64}, the server has [0-9a-f]{64}\n$/,
      );
      assert.equal(
        proxy.connections[0].dataBytes,
        3 * MiB + 5,
        "the whole file went through, one byte altered",
      );
    } finally {
      await proxy.close();
    }
    assert.equal(await Deno.readTextFile(`${out}/f.bin`), "the old content");
    assert.deepEqual(await listDir(out), ["f.bin"], "the corrupt part is removed");

    // With retries, the next try starts from byte 0 (the proxy alters only its first connection's data).
    const again = new FrameProxy(server.ports[0], { corrupt: { connection: 0, dataByte: 1000 } });
    try {
      const r = await runClient(getArgs(again.address, "f.bin", out, "--json"));
      assert.equal(r.code, 0, r.stderr);
      const [report] = jsonLines(r);
      assert.equal(report.attempts, 2);
      assert.equal(report.resumedFrom, undefined);
      assert.equal(await sha256File(`${out}/f.bin`), expected);
    } finally {
      await again.close();
    }
  });
});

Deno.test("--no-verify checks the size but not the SHA-256: the same corruption is published, with no sha256 reported", async () => {
  await withServer(async ({ src, out, server }) => {
    const expected = await sha256File(await makeFile(src, "f.bin", 3 * MiB + 5));
    const proxy = new FrameProxy(server.ports[0], { corrupt: { connection: 0, dataByte: 2 * MiB } });
    try {
      const r = await runClient(getArgs(proxy.address, "f.bin", out, "--no-verify", "--json"));
      assert.equal(r.code, 0, r.stderr);
      const [report] = jsonLines(r);
      assert.equal(report.status, "updated");
      assert.equal(report.size, 3 * MiB + 5);
      assert.equal(report.sha256, undefined, "nothing was verified, so no hash is claimed");
    } finally {
      await proxy.close();
    }
    const published = await Deno.readFile(`${out}/f.bin`);
    assert.equal(published.byteLength, 3 * MiB + 5);
    assert.notEqual(await sha256File(`${out}/f.bin`), expected, "the altered byte went through unchecked");
  });
});

Deno.test("a one-file get sends the end frame with its request, before any answer", async () => {
  await withServer(async ({ src, out, server }) => {
    const expected = await sha256File(await makeFile(src, "one.bin", 300_000));
    const proxy = new FrameProxy(server.ports[0]);
    try {
      const r = await runClient(getArgs(proxy.address, "one.bin", out));
      assert.equal(r.code, 0, r.stderr);
      assert.equal(proxy.connections.length, 1);
      assert.equal(proxy.connections[0].requests.length, 1);
      assert.equal(proxy.connections[0].endFrameAfterControls, 0, "the end frame went out before any answer");
    } finally {
      await proxy.close();
    }
    assert.equal(await sha256File(`${out}/one.bin`), expected);
    // The server read the end frame behind the request: the connection ended well, with nothing left over.
    await logged(server, /GET "one\.bin" .*result=ok/);
    assert.equal(server.log.filter((l) => /result=(?!ok)/.test(l)).length, 0, server.log.join("\n"));
  });
});

Deno.test("an unchanged file is not transferred again: no data frame, status unchanged, exit 0", async () => {
  await withServer(async ({ src, out, server }) => {
    const size = 2 * DATA_FRAME_PAYLOAD + 5;
    const expected = await sha256File(await makeFile(src, "f.bin", size));
    const proxy = new FrameProxy(server.ports[0]);
    try {
      const first = await runClient(getArgs(proxy.address, "f.bin", out));
      assert.equal(first.code, 0, first.stderr);
      assert.equal(proxy.connections[0].dataFrames, 3);
      const mtime = (await Deno.stat(`${out}/f.bin`)).mtime;

      const r = await runClient(getArgs(proxy.address, "f.bin", out, "--json"));
      assert.equal(r.code, 0, r.stderr);
      // A copy of 1 MiB or more is checked by `sig` (a delta if it changed), a smaller one by `get`.
      assert.equal(proxy.connections[1].requests[0].op, "sig");
      assert.equal(proxy.connections[1].requests[0].ifNoneMatch, expected);
      assert.equal(proxy.connections[1].dataFrames, 0, "no data frame");
      assert.equal(proxy.connections[1].controls[0].body.unchanged, true);
      const [report] = jsonLines(r);
      assert.equal(report.status, "unchanged");
      assert.equal(report.bytes, 0);
      assert.equal(report.sha256, expected);
      assert.deepEqual((await Deno.stat(`${out}/f.bin`)).mtime, mtime, "the target was not rewritten");
      assert.match((await logged(server, /request=SIG "f\.bin" ifNoneMatch/))[0], /result=unchanged/);
      assert.doesNotMatch(server.log.join("\n"), /signed "f\.bin"/, "no signature for an unchanged file");
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("get and mirror give the published file the server's mtime to the nanosecond", async () => {
  await withServer(async ({ src, out, address }) => {
    // Both sizes: a small file is published by the tree fetch's batches, a large one on its own.
    for (const [name, size] of [["small.bin", 1000], ["large.bin", 3 * 1024 * 1024]] as const) {
      const path = await makeFile(src, name, size);
      const touched = await new Deno.Command("touch", { args: ["-d", "@1700000000.123456789", path] })
        .output();
      assert.ok(touched.success, "touch -d");
    }
    const mtimeNs = (path: string) => statAt(-100, path).mtimeNs;
    assert.equal(mtimeNs(`${src}/small.bin`), 1_700_000_000_123_456_789n, "the server's file as set");
    const got = await runClient(getArgs(address, "large.bin", out));
    assert.equal(got.code, 0, got.stderr);
    assert.equal(mtimeNs(`${out}/large.bin`), mtimeNs(`${src}/large.bin`), "get");
    const mirrored = await runClient(["mirror", address, ".", `${out}/tree`, "-q"]);
    assert.equal(mirrored.code, 0, mirrored.stderr);
    for (const name of ["small.bin", "large.bin"]) {
      assert.equal(mtimeNs(`${out}/tree/${name}`), mtimeNs(`${src}/${name}`), `mirror: ${name}`);
    }
  });
});

Deno.test("--json prints one object per file with path, status, bytes, sha256, seconds, attempts, requestId (and error when failed)", async () => {
  await withServer(async ({ src, out, address }) => {
    const path = await makeFile(src, "f.bin", 123_456);
    await Deno.chmod(path, 0o640);
    const ok = await runClient(getArgs(address, "f.bin", out, "--json"));
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stderr, "", "--json: nothing for people on stderr");
    const lines = jsonLines(ok);
    assert.equal(lines.length, 1);
    const [report] = lines;
    assert.deepEqual(Object.keys(report).sort(), [
      "attempts",
      "bytes",
      "path",
      "requestId",
      "seconds",
      "sha256",
      "size",
      "status",
      "target",
    ]);
    assert.equal(report.path, "f.bin");
    assert.equal(report.target, `${out}/f.bin`);
    assert.equal(report.status, "updated");
    assert.equal(report.bytes, 123_456);
    assert.equal(report.size, 123_456);
    assert.equal(report.sha256, await sha256File(path));
    assert.equal(typeof report.seconds, "number");
    assert.equal(report.attempts, 1);
    const published = await Deno.stat(`${out}/f.bin`);
    assert.equal(published.mode! & 0o777, 0o640, "the server's mode");
    const remoteSeconds = Math.floor((await Deno.stat(path)).mtime!.getTime() / 1000);
    assert.equal(Math.floor(published.mtime!.getTime() / 1000), remoteSeconds, "the server's mtime");

    const missing = await runClient(getArgs(address, "nope.bin", out, "--json"));
    assert.equal(missing.code, 5);
    const [failed] = jsonLines(missing);
    assert.equal(failed.status, "failed");
    assert.equal(failed.exitCode, 5);
    assert.match(failed.error as string, /NOT_FOUND/);
    assert.equal(failed.attempts, 1, "NOT_FOUND is not retried");
    assert.match(missing.stderr, /^ferry: [^\n]*NOT_FOUND[^\n]*\n$/, "the error also goes to stderr");
  });
});

/** Server arguments for a server whose one worker takes one connection and whose queue is 0. */
const ONE_SLOT = ["--conns-per-worker", "1", "--queue", "0", "--idle-timeout", "120"];

/**
 * Takes the one slot with a transfer the hog does not read (a connection waiting for its next request
 * would hold none): every client then gets BUSY until it is closed.
 */
async function hogTheWorker(server: TestServer, src: string): Promise<RawConnection> {
  await sparseFile(src, "hog.bin", 256 * 1024 * 1024);
  const hog = await RawConnection.open(server.ports[0]);
  // The header proves the worker is answering the hog (it stays so until the hog closes).
  await hog.sendRequest({ op: "get", path: "hog.bin" });
  assert.equal(String.fromCharCode((await hog.readFrame())!.payload[0]), "H");
  return hog;
}

Deno.test("still BUSY after --retries 1: exit 4 after 2 attempts, each at least the server's retryAfterMs apart", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await makeFile(src, "f.bin", 1000);
    const hog = await hogTheWorker(server, src);
    try {
      const r = await runClient(getArgs(address, "f.bin", out, "--retries", "1", "--json"));
      assert.equal(r.code, 4, r.stderr);
      assert.match(r.stderr, /^ferry: [^\n]*BUSY[^\n]*\(after 2 attempts\)\n$/);
      assert.equal(jsonLines(r)[0].attempts, 2);
      const refusals = await logged(server, /connection \d+ refused/, 2);
      assert.equal(refusals.length, 2);
      const at = refusals.map((l) => Date.parse(l.split(" ")[0]));
      assert.ok(at[1] - at[0] >= 1000, `the retry waited for retryAfterMs: ${refusals.join("\n")}`);
      assert.deepEqual(await listDir(out), []);
    } finally {
      hog.close();
    }
  }, ONE_SLOT);
});

Deno.test("retries honour BUSY and succeed once the worker is free", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const expected = await sha256File(await makeFile(src, "f.bin", 200_000));
    const hog = await hogTheWorker(server, src);
    try {
      const client = spawnClient(getArgs(address, "f.bin", out, "--json", "--retries", "10"));
      await logged(server, /connection \d+ refused/);
      hog.close(); // the worker is free from now on
      const r = await client.done;
      assert.equal(r.code, 0, r.stderr);
      const [report] = jsonLines(r);
      assert.ok((report.attempts as number) >= 2, `attempts: ${report.attempts}`);
      assert.equal(await sha256File(`${out}/f.bin`), expected);
    } finally {
      hog.close();
    }
  }, ONE_SLOT);
});

Deno.test("--timeout bounds the whole run: a peer that never answers ends with exit 3", async () => {
  await using out = await tempDir();
  // A peer that accepts and then says nothing: only the deadline ends the wait (the stall timeout is longer).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) accepted.push(conn);
  })();
  try {
    const address = `127.0.0.1:${listener.addr.port}`;
    const r = await runClient(
      getArgs(address, "f.bin", out.path, "--timeout", "1", "--stall-timeout", "600"),
    );
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /^ferry: --timeout: not done within 1s\n$/);
    assert.deepEqual(await listDir(out.path), []);
  } finally {
    listener.close();
    await accepting;
    for (const conn of accepted) conn.close();
  }
});

Deno.test("--timeout ends BUSY retries that would go on longer: exit 3, not 4", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await makeFile(src, "f.bin", 1000);
    const hog = await hogTheWorker(server, src);
    try {
      const r = await runClient(getArgs(address, "f.bin", out, "--retries", "100", "--timeout", "1.5"));
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /^ferry: --timeout: not done within 1\.5s/);
    } finally {
      hog.close();
    }
  }, ONE_SLOT);
});

Deno.test("--lock: a second run exits 9 at once while the first holds the lock; the first completes", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const expected = await sha256File(await makeFile(src, "f.bin", 8 * MiB));
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 1 * MiB } });
    const lock = `${out}/ferry.lock`;
    try {
      const first = spawnClient(getArgs(proxy.address, "f.bin", out, "--lock", lock));
      await proxy.held; // the first run is mid-transfer, holding the lock
      const second = await runClient(["get", address, "f.bin", "-o", `${out}/g.bin`, "--lock", lock]);
      assert.equal(second.code, 9, second.stderr);
      assert.match(second.stderr, /^ferry: --lock: another run holds [^\n]*ferry\.lock\n$/);
      const mirror = await runClient(["mirror", address, ".", `${out}/m`, "--lock", lock, "--json"]);
      assert.equal(mirror.code, 9, mirror.stderr);
      const [summary] = allJsonLines(mirror).map((l) => l.summary as Record<string, unknown>);
      assert.equal(summary.exitCode, 9, "mirror --json says why in its summary line");
      assert.match(JSON.stringify(summary.problems), /another run holds/);
      // Without --lock, a run that wants the same part is refused too, rather than writing into it.
      await partReaches(out, "f.bin", proxy.connections[0].dataBytes);
      const third = await runClient(getArgs(address, "f.bin", out));
      assert.equal(third.code, 9, third.stderr);
      assert.match(third.stderr, /being written by another ferry run/);
      proxy.release();
      const r = await first.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await sha256File(`${out}/f.bin`), expected);
      assert.deepEqual(await listDir(out), ["f.bin", "ferry.lock"]);
      const fourth = await runClient(getArgs(address, "f.bin", out, "--lock", lock));
      assert.equal(fourth.code, 0, `the lock is free again: ${fourth.stderr}`);
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("-o - streams to stdout with the SHA-256 checked; a cut is resumed from the bytes already written", async () => {
  await withServer(async ({ src, server }) => {
    const expected = await sha256File(await makeFile(src, "f.bin", 30 * MiB));
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 5 * MiB } });
    try {
      const client = spawnClient(["get", proxy.address, "f.bin", "-o", "-"]);
      await proxy.held;
      proxy.cut(); // the connection ends after 5 MiB or more
      const r = await client.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha256(r.stdout), expected);
      const resumed = proxy.connections[1].requests[0];
      assert.ok((resumed.offset as number) >= 5 * MiB, JSON.stringify(resumed));
      assert.equal(proxy.connections[1].dataBytes, 30 * MiB - (resumed.offset as number));
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("the progress bar appears on a terminal only, never with --quiet or in a pipe", async () => {
  await withServer(async ({ src, out, address }) => {
    await makeFile(src, "f.bin", 4 * MiB);
    const underTerminal = async (extra: string) => {
      // script(1) gives the client a pseudo-terminal for stdin, stdout and stderr.
      const command = `'${Deno.execPath()}' run -A '${repoPath("client.ts")}' ${
        getArgs(address, "f.bin", out).join(" ")
      } ${extra}`;
      const r = await new Deno.Command("script", { args: ["-qec", command, "/dev/null"], stdin: "null" })
        .output();
      await Deno.remove(`${out}/f.bin`);
      return new TextDecoder().decode(r.stdout);
    };
    const shown = await underTerminal("");
    assert.match(shown, /f\.bin .*\/ 4\.0 MiB \d+% .*\/s ETA/);
    assert.match(shown, /get done: 4194304 bytes/);
    assert.doesNotMatch(await underTerminal("--quiet"), /ETA/);
    const piped = await runClient(getArgs(address, "f.bin", out));
    assert.equal(piped.code, 0);
    assert.doesNotMatch(piped.stderr, /ETA|\r/);
  });
});

Deno.test("new options are checked: one line and exit 2 for each mistake", async () => {
  const cases = [
    ["--retries", "-1"],
    ["--retries", "two"],
    ["--timeout", "0"],
    ["--splay", "-3"],
    ["--retry-max-time", "soon"],
    ["--delete"],
    ["-o", "-", "--json"],
    ["--lock", ""],
  ].map((extra) => ["get", "127.0.0.1:1", "x", ...extra]);
  cases.push(
    ["mirror", "127.0.0.1:1", "dir"],
    ["mirror", "127.0.0.1:1", "dir", "local", "extra"],
    ["mirror", "127.0.0.1:1", "dir", "local", "-o", "x"],
    ["mirror", "127.0.0.1:1", "../up", "local"],
    ["pull", "127.0.0.1:1", "--no-verify"],
  );
  for (const args of cases) {
    const r = await runClient(args);
    assert.equal(r.code, 2, `${JSON.stringify(args)}: ${r.stderr}`);
    assert.match(r.stderr, /^ferry: [^\n]+\n$/, JSON.stringify(args));
  }
  const help = new TextDecoder().decode((await runClient(["--help"])).stdout);
  for (const code of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) assert.match(help, new RegExp(`\\b${code} [a-z]`));
});

// libc's symbols are bound on first use and stay bound for the process. Bind the ones a part uses before
// any test starts: the test sanitizer counts a library opened during a test as a leak.
{
  const dir = Deno.makeTempDirSync();
  const place = { dir: LocalDir.open(dir), name: "warm", followLink: true };
  await (await AtomicFile.openPart(place, "0123456789abcdef01234567")).commit({ mode: 0o644 });
  await (await AtomicFile.create(place)).abort();
  place.dir.close();
  Deno.removeSync(dir, { recursive: true });
}

Deno.test("a part is held under an exclusive lock: a second open of it is refused until it is released", async () => {
  await using dir = await tempDir();
  const target = `${dir.path}/t.bin`;
  using localDir = LocalDir.open(dir.path);
  const place = { dir: localDir, name: "t.bin", followLink: true };
  const part = await AtomicFile.openPart(place, "0123456789abcdef01234567");
  try {
    await part.write(new TextEncoder().encode("some bytes"));
    await assert.rejects(AtomicFile.openPart(place, "0123456789abcdef01234567"), PartLockedError);
  } finally {
    await part.release();
  }
  const again = await AtomicFile.openPart(place, "0123456789abcdef01234567");
  assert.equal(again.size, 10, "released, the part is resumed where it stopped");
  await again.commit({});
  assert.equal(await Deno.readTextFile(target), "some bytes");
  assert.deepEqual(await listDir(dir.path), ["t.bin"]);
});

Deno.test("retry timing: full jitter below the exponential cap, never below retryAfterMs; retries stop on a fatal error", async () => {
  assert.equal(backoffDelay(1, { random: () => 0.999, baseMs: 500 }), 499);
  assert.equal(backoffDelay(4, { random: () => 0.5, baseMs: 500 }), 2000);
  assert.equal(backoffDelay(20, { random: () => 0.5, baseMs: 500, maxMs: 30_000 }), 15_000);
  assert.equal(backoffDelay(1, { random: () => 0, retryAfterMs: 1000 }), 1000);
  let tries = 0;
  await assert.rejects(
    withRetries(() => {
      tries++;
      return Promise.reject(new Error(tries < 3 ? "transient" : "fatal"));
    }, { retries: 10, baseMs: 1, verdict: (e) => ({ retryable: (e as Error).message === "transient" }) }),
    /fatal/,
  );
  assert.equal(tries, 3);
  assert.equal(worstExitCode([0, ExitCode.NotFound, ExitCode.LocalIo, ExitCode.Connect]), ExitCode.LocalIo);
  assert.equal(worstExitCode([0, 0]), 0);
});

Deno.test("the progress line shows bytes, percentage, rate and time left within the width", () => {
  const line = renderProgress({
    label: "builds/app.tar.gz",
    total: 100 * MiB,
    done: 25 * MiB,
    startedAt: 0,
    elapsedMs: 5000,
  }, 100);
  assert.match(line, /^builds\/app\.tar\.gz \[#+\.+\] 25\.0 MiB \/ 100\.0 MiB 25% 5\.0 MiB\/s ETA 0:15$/);
  assert.ok(line.length <= 100);
  const long = { label: "x".repeat(200), total: 10, done: 5, startedAt: 0, elapsedMs: 1 };
  assert.ok(renderProgress(long, 60).length <= 60);
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatDuration(3725), "1:02:05");
});

Deno.test("a persistent connection the server closed for idling is replaced at the next request, transparently", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "hello\n");
    const session = new Session({ hostname: "127.0.0.1", port: server.ports[0] }, {
      connectTimeoutMs: 5000,
      stallTimeoutMs: 5000,
    });
    try {
      const first = await session.request({ v: 1, op: "stat", path: "a.txt" }, "a.txt");
      assert.equal(first.size, 6);
      await logged(server, /TIMEOUT/); // the server gave up on the idle connection (TIMEOUT frame, close)
      const second = await session.request({ v: 1, op: "stat", path: "a.txt" }, "a.txt");
      assert.equal(second.sha256, first.sha256);
      assert.equal(session.connections, 2);
    } finally {
      await session.close();
    }
  }, ["--idle-timeout", "0.5"]);
});
