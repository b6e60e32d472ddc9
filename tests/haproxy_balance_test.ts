/**
 * Several servers behind a real HAProxy, with the repository's deploy/haproxy.cfg: three ferry servers on
 * loopback serve the same tree, 20 `mirror` runs go through HAProxy at once, and one server is SIGKILLed
 * while it serves them. Every run must still end with exit 0 and a copy identical to the source (the runs
 * cut off retry, and HAProxy sends them elsewhere), the killed server's worker must not outlive it, and every
 * server's request log must name the clients' own address (127.0.0.1), not HAProxy's (127.0.0.3 here), which
 * only the PROXY v2 header can tell them.
 *
 * Needs haproxy (Debian package haproxy); says it skipped, and why, when it is missing.
 */

import assert from "node:assert/strict";
import {
  childPids,
  type ClientResult,
  eventually,
  isAlive,
  makeFile,
  repoPath,
  runClient,
  startServer,
  tempDir,
  type TestServer,
  treeOf,
} from "./helpers.ts";
import { freePort, startHaproxy, type TestHaproxy, which } from "./haproxy.ts";

const SERVERS = 3;
const JOBS = 20;

/**
 * deploy/haproxy.cfg with the test's ports, checks every 200 ms, and HAProxy connecting to the servers from
 * 127.0.0.3, so that a log line showing 127.0.0.1 can only come from the PROXY header. HAProxy logs to
 * its stderr (a line per connection, option tcplog), which the test reads.
 */
async function renderConfig(frontendPort: number, serverPorts: number[]): Promise<string> {
  const text = await Deno.readTextFile(repoPath("deploy/haproxy.cfg"));
  let rendered = text
    .replace(/^(\s*)bind :7420$/m, `$1bind 127.0.0.1:${frontendPort}`)
    .replace(/ inter 2s /, " inter 200ms ");
  serverPorts.forEach((port, i) => {
    rendered = rendered.replace(
      new RegExp(`^(\\s*)server ferry${i + 1} 10\\.0\\.0\\.1${i + 1}:7420$`, "m"),
      `$1server ferry${i + 1} 127.0.0.1:${port} source 127.0.0.3`,
    );
  });
  const parts = [
    `bind 127.0.0.1:${frontendPort}`,
    "balance leastconn",
    "send-proxy-v2 check check-send-proxy inter 200ms",
    ...serverPorts.map((port, i) => `server ferry${i + 1} 127.0.0.1:${port} source 127.0.0.3`),
  ];
  for (const part of parts) {
    assert.ok(rendered.includes(part), `the deploy config no longer has the line for ${part}`);
  }
  return rendered;
}

/**
 * A tree worth cutting in the middle: 240 small files in 8 folders and two files of a few MiB. Returns the
 * sum of the files' sizes, which every complete mirror receives at least.
 */
async function makeTree(root: string): Promise<number> {
  const sizes: number[] = [];
  for (let d = 0; d < 8; d++) {
    await Deno.mkdir(`${root}/d${d}`);
    for (let f = 0; f < 30; f++) {
      sizes.push(500 + 97 * (d * 30 + f));
      await makeFile(`${root}/d${d}`, `f${f}.bin`, sizes.at(-1)!);
    }
  }
  for (const [name, size] of [["big1.bin", 3 * 1024 * 1024 + 17], ["big2.bin", 1024 * 1024 + 5]] as const) {
    sizes.push(size);
    await makeFile(root, name, size);
  }
  return sizes.reduce((a, b) => a + b);
}

/** HAProxy's tcplog lines (short format): the server a connection went to, and the bytes sent to its client. */
function sessions(log: string[]): { server: string; bytes: number }[] {
  return log.flatMap((line) => {
    const m = / ferry\/(ferry\d) [-\d]+\/[-\d]+\/[-\d]+ (\d+) /.exec(line);
    return m === null ? [] : [{ server: m[1], bytes: Number(m[2]) }];
  });
}

Deno.test("20 mirrors through HAProxy (leastconn, ping checks, PROXY v2) survive a server SIGKILLed mid-way", async () => {
  const haproxy = which("haproxy");
  if (haproxy === null) {
    console.log("SKIPPED: haproxy is not installed (Debian: apt-get install haproxy)");
    return;
  }
  await using served = await tempDir();
  await using out = await tempDir();
  const treeBytes = await makeTree(served.path);

  const servers: TestServer[] = [];
  let proxy: TestHaproxy | null = null;
  const workers: number[] = [];
  let jobs: Promise<ClientResult>[] = [];
  try {
    for (let i = 0; i < SERVERS; i++) {
      servers.push(
        await startServer([
          "--root",
          served.path,
          "--workers",
          "1",
          "--listen",
          "127.0.0.1:0",
          "--proxy-protocol",
          "127.0.0.3/32",
          "--request-log",
          "-",
        ]),
      );
    }
    const frontendPort = freePort();
    await Deno.writeTextFile(
      `${out.path}/haproxy.cfg`,
      await renderConfig(frontendPort, servers.map((s) => s.ports[0])),
    );
    proxy = await startHaproxy(haproxy, `${out.path}/haproxy.cfg`, frontendPort);

    // Known beforehand, so that nothing stands between seeing the line and the kill.
    const workersOf = await Promise.all(servers.map((server) => childPids(server.pid)));
    const address = `127.0.0.1:${frontendPort}`;
    jobs = Array.from(
      { length: JOBS },
      (_, i) => runClient(["mirror", address, ".", `${out.path}/copy${i}`, "--timeout", "60", "-q"]),
    );
    // The first server seen answering a listing is the one killed: that run has its files yet to fetch.
    const victim = await Promise.race([
      ...servers.map((server) => server.waitForLog(/request=LIST /).then(() => server)),
      Promise.all(jobs).then(() => null), // all ended with no listing answered
    ]);
    assert.ok(victim !== null, `no server answered a listing:\n${servers.flatMap((s) => s.log).join("\n")}`);
    victim.kill("SIGKILL");
    workers.push(...workersOf[servers.indexOf(victim)]);
    assert.ok(workers.length > 0, "the killed server had no worker");

    const results = await Promise.all(jobs);
    for (const [i, result] of results.entries()) assert.equal(result.code, 0, `run ${i}: ${result.stderr}`);
    const source = await treeOf(served.path);
    for (let i = 0; i < JOBS; i++) assert.deepEqual(await treeOf(`${out.path}/copy${i}`), source);

    // The master's worker ends when its channel to the master closes.
    for (const pid of workers) {
      await eventually(`worker ${pid} of the killed server ends`, async () => !await isAlive(pid));
    }

    // Health pings are not logged (no --log-health): every request line is a client's, and names it.
    // Each server took some of the runs (leastconn spread them), the killed one included.
    for (const [i, server] of servers.entries()) {
      const requestLines = server.log.filter((line) => line.includes(" request="));
      assert.ok(requestLines.length > 0, `ferry${i + 1} logged no request`);
      for (const line of requestLines) assert.match(line, /peer=127\.0\.0\.1:\d+ /);
    }

    // The kill cut a run off: HAProxy ended a connection to the killed server that had carried some bytes
    // but fewer than a whole mirror (the readiness probe's connection carries none).
    await proxy.stop();
    const victimName = `ferry${servers.indexOf(victim) + 1}`;
    const cut = sessions(proxy.log).filter((s) =>
      s.server === victimName && s.bytes > 0 && s.bytes < treeBytes
    );
    assert.ok(cut.length > 0, `no run was cut off by the kill:\n${proxy.log.join("\n")}`);
  } finally {
    await proxy?.stop();
    await Promise.all(servers.map((s) => s.stop()));
    await Promise.allSettled(jobs); // already ended, unless the test failed before they did
    for (const pid of workers) {
      if (await isAlive(pid)) Deno.kill(pid, "SIGKILL");
    }
  }
});
