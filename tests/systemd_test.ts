/**
 * Running under systemd: the server serves on listening sockets passed by socket activation (started by
 * `systemd-socket-activate`, which passes them as systemd does), tells systemd its state on
 * NOTIFY_SOCKET in order (READY, RELOADING, READY, STOPPING; WATCHDOG when asked), and the unit files
 * in deploy/ pass `systemd-analyze verify`.
 */
import assert from "node:assert/strict";
import { bind, C, close, monotonicMicros, socket, tryRecv, WOULD_BLOCK } from "../ffi/libc.ts";
import { encodeUnixSockaddr } from "../ffi/sockaddr.ts";
import { RawConnection, repoPath, runClient, startServer, tempDir, watchLog } from "./helpers.ts";

/** True if `program` runs here; else prints that the test is skipped and why. */
async function available(program: string, test: string): Promise<boolean> {
  try {
    await new Deno.Command(program, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    console.log(`skipped: ${test}: ${program} (Debian package systemd) is not installed`);
    return false;
  }
}

/** A free TCP port on 127.0.0.1 (free when asked: nothing else here binds ports it did not pick itself). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A datagram socket bound at `name` (a path, or `@name` in the abstract namespace), as systemd listens. */
function notifySocket(name: string): { fd: number; messages(): string[] } & Disposable {
  const fd = socket(C.AF_UNIX, C.SOCK_DGRAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
  bind(fd, encodeUnixSockaddr(name));
  const buf = new Uint8Array(4096);
  return {
    fd,
    /** The datagrams that arrived, in order. */
    messages() {
      const out: string[] = [];
      for (let n = tryRecv(fd, buf); n !== WOULD_BLOCK; n = tryRecv(fd, buf)) {
        out.push(new TextDecoder().decode(buf.subarray(0, n)));
      }
      return out;
    },
    [Symbol.dispose]: () => close(fd),
  };
}

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
{
  monotonicMicros();
  using warmUp = notifySocket(`@ferry-test-warm-up-${Deno.pid}`);
  warmUp.messages();
}

Deno.test("started by systemd-socket-activate, the server serves on the inherited fds by their names", async () => {
  const test = "socket activation";
  if (!await available("systemd-socket-activate", test)) return;
  const [requestPort, classicPort] = [freePort(), freePort()];
  const process = new Deno.Command("systemd-socket-activate", {
    args: [
      `--listen=127.0.0.1:${requestPort}`,
      `--listen=127.0.0.1:${classicPort}`,
      "--fdname=request:classic",
      Deno.execPath(),
      "run",
      "--allow-all",
      repoPath("server.ts"),
      "--root",
      repoPath("demo"),
      "--push",
      repoPath("demo/hello.txt"),
      "--workers",
      "1",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const { log, waitForLog, ended } = watchLog(process.stderr);
  try {
    await waitForLog(new RegExp(`Listening on 127\\.0\\.0\\.1:${classicPort}`));
    // The first connection makes systemd-socket-activate start the server, which accepts it.
    const conn = await RawConnection.open(requestPort);
    try {
      await conn.sendRequest({ op: "get", path: "hello.txt" });
      const { data } = await conn.readResponse();
      assert.equal(new TextDecoder().decode(data), await Deno.readTextFile(repoPath("demo/hello.txt")));
    } finally {
      conn.close();
    }
    await using dir = await tempDir();
    const pulled = await runClient(["pull", `127.0.0.1:${classicPort}`, "-o", dir.path, "-q"]);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(
      await Deno.readTextFile(`${dir.path}/hello.txt`),
      await Deno.readTextFile(repoPath("demo/hello.txt")),
    );
    await waitForLog(/ready with 1 workers/);
    // The same process: systemd-socket-activate execs the server in its place, as systemd does.
    assert.ok(
      log.some((l) =>
        l.includes(`master[${process.pid}]: listening on 127.0.0.1:${requestPort} (request mode`)
      ),
    );
    assert.ok(
      log.some((l) =>
        l.includes(`master[${process.pid}]: listening on 127.0.0.1:${classicPort} (classic mode`)
      ),
    );
  } finally {
    process.kill("SIGTERM");
    assert.equal((await process.status).code, 0);
    await ended;
  }
});

Deno.test("an inherited socket whose name asks for a mode the command line cannot serve: exit 1 naming it", async () => {
  if (!await available("systemd-socket-activate", "socket activation refused")) return;
  const port = freePort();
  const process = new Deno.Command("systemd-socket-activate", {
    args: [
      `--listen=127.0.0.1:${port}`,
      "--fdname=classic",
      Deno.execPath(),
      "run",
      "-A",
      repoPath("server.ts"),
      "--root",
      repoPath("demo"),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const { log, waitForLog, ended } = watchLog(process.stderr);
  await waitForLog(/Listening on/);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port }); // starts the server
  const status = await process.status;
  conn.close();
  await ended;
  assert.equal(status.code, 1);
  assert.ok(
    log.some((l) =>
      l === `ferry server: the listener 'classic' on 127.0.0.1:${port} from systemd needs --push`
    ),
    log.join("\n"),
  );
});

Deno.test("sd_notify: READY, RELOADING with MONOTONIC_USEC, READY, STOPPING arrive in order, and WATCHDOG", async () => {
  await using dir = await tempDir();
  using notify = notifySocket(`${dir.path}/notify`);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", "demo", "--workers", "2"], {
    command: Deno.execPath(),
    args: [],
    env: { NOTIFY_SOCKET: `${dir.path}/notify`, WATCHDOG_USEC: "30000000" },
  });
  let before = 0n, after = 0n;
  try {
    before = monotonicMicros();
    const from = server.log.length;
    server.kill("SIGHUP");
    await server.waitForLog(/master\[\d+\]: reloaded$/, from);
    after = monotonicMicros();
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const messages = notify.messages();
  assert.ok(messages.includes("WATCHDOG=1"), messages.join(" | "));
  const states = messages.filter((m) => m !== "WATCHDOG=1");
  assert.equal(states.length, 4, states.join(" | "));
  assert.match(states[0], /^READY=1\n/);
  const reloading = /^RELOADING=1\nMONOTONIC_USEC=(\d+)$/.exec(states[1]);
  assert.ok(reloading, states[1]);
  const at = BigInt(reloading[1]);
  assert.ok(before <= at && at <= after, `MONOTONIC_USEC ${at} is within the reload [${before}, ${after}]`);
  assert.match(states[2], /^READY=1\n/);
  assert.equal(states[3], "STOPPING=1");
});

Deno.test("sd_notify through an upgrade: the new master says MAINPID and READY; the old one never STOPPING", async () => {
  await using dir = await tempDir();
  using notify = notifySocket(`${dir.path}/notify`);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", "demo", "--workers", "1"], {
    command: Deno.execPath(),
    args: [],
    env: { NOTIFY_SOCKET: `${dir.path}/notify` },
  });
  let newPid = 0;
  try {
    const from = server.log.length;
    server.kill("SIGUSR2");
    newPid = Number(/pid (\d+)/.exec(await server.waitForLog(/started a new master/, from))![1]);
    assert.equal((await server.process.status).code, 0, "the old master handed over and exited");
  } finally {
    if (newPid !== 0) Deno.kill(newPid, "SIGTERM");
    await server.stop(); // waits for the new master too: it shares the old one's stderr
  }
  assert.deepEqual(notify.messages(), [
    "READY=1\nSTATUS=serving",
    `MAINPID=${newPid}\nREADY=1\nSTATUS=serving`,
    "STOPPING=1",
  ]);
});

Deno.test("sd_notify to a socket in the abstract namespace (@name)", async () => {
  const name = `@ferry-test-${Deno.pid}-${crypto.randomUUID()}`;
  using notify = notifySocket(name);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", "demo", "--workers", "1"], {
    command: Deno.execPath(),
    args: [],
    env: { NOTIFY_SOCKET: name },
  });
  assert.equal((await server.stop()).code, 0);
  assert.deepEqual(notify.messages(), ["READY=1\nSTATUS=serving", "STOPPING=1"]);
});

Deno.test("systemd-analyze verify accepts the units in deploy/", async () => {
  if (!await available("systemd-analyze", "unit verification")) return;
  await using dir = await tempDir();
  // The units name the installed binaries; verify checks that they exist, so stand-ins take their place.
  await Deno.mkdir(`${dir.path}/bin`);
  for (const program of ["ferry-server", "ferry"]) {
    await Deno.writeTextFile(`${dir.path}/bin/${program}`, "#!/bin/sh\n", { mode: 0o755 });
  }
  const units = [];
  for await (const entry of Deno.readDir(repoPath("deploy"))) {
    if (!/\.(service|socket|timer)$/.test(entry.name)) continue; // e.g. HAProxy's configuration
    const text = await Deno.readTextFile(repoPath(`deploy/${entry.name}`));
    await Deno.writeTextFile(
      `${dir.path}/${entry.name}`,
      text.replaceAll("/usr/local/bin/", `${dir.path}/bin/`),
    );
    units.push(`${dir.path}/${entry.name}`);
  }
  assert.deepEqual(units.map((u) => u.slice(dir.path.length + 1)).sort(), [
    "ferry-mirror@.service",
    "ferry-mirror@.timer",
    "ferry.service",
    "ferry.socket",
  ]);
  const out = await new Deno.Command("systemd-analyze", { args: ["verify", "--man=no", ...units] }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  if (
    !out.success &&
    /Failed to (connect|initialize)|not been booted with systemd|System has not been booted/.test(stderr)
  ) {
    console.log(
      `skipped: unit verification: systemd-analyze cannot run in this container: ${stderr.split("\n")[0]}`,
    );
    return;
  }
  assert.equal(out.code, 0, stderr);
  assert.equal(stderr, "", "no warning about any unit");
});
