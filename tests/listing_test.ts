/**
 * A listing never lies: folders the server cannot read (chmod 000, with the server running as an
 * unprivileged user), names that are not UTF-8, a folder moved away and opens failing with EMFILE in the
 * middle of a walk are reported as left out, and `mirror --delete` then deletes nothing and exits 10 while
 * fetching what it could. A streamed listing has no 10,000-entry cap, and a large walk does not hold up
 * the worker's other connections.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import {
  C,
  close,
  connect,
  setsockoptInt,
  setsockoptTimeval,
  socket,
  tryRecv,
  trySend,
} from "../ffi/libc.ts";
import { encodeSockaddr } from "../ffi/sockaddr.ts";
import {
  decodeJson,
  encodeJsonFrame,
  encodeRequest,
  FRAME_HEADER_SIZE,
  FrameType,
  getFrameLength,
  LIST_BATCH_BYTES,
} from "../framing.ts";
import { jsonLines, logged, withServer } from "./client_fixture.ts";
import {
  childPids,
  type Launcher,
  RawConnection,
  readRequest,
  repoPath,
  runClient,
  sha256File,
  startServer,
  tempDir,
  type TestServer,
  treeOf,
} from "./helpers.ts";
import { utf8Length } from "../worker/listing.ts";

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak. (Each call fails: no peer.)
{
  const fd = socket(C.AF_INET, C.SOCK_STREAM | C.SOCK_CLOEXEC);
  setsockoptInt(fd, C.SOL_SOCKET, C.SO_RCVBUF, 4096);
  setsockoptTimeval(fd, C.SOL_SOCKET, C.SO_RCVTIMEO, 1);
  assert.throws(() => trySend(fd, new Uint8Array(1)));
  assert.throws(() => tryRecv(fd, new Uint8Array(1)));
  assert.throws(() => connect(fd, encodeSockaddr({ family: C.AF_INET, host: "127.0.0.1", port: 1 })));
  close(fd);
}

/**
 * How to start the server as a user that file permissions apply to: as it is when the tests do not run as
 * root; as `nobody` through setpriv(1) when they do (with a link to the deno executable and a cache that
 * user can reach). A string says why it cannot be done here.
 */
async function unprivilegedLauncher(dir: string): Promise<Launcher | null | string> {
  if (Deno.uid() !== 0) return null; // the server is unprivileged already
  try {
    const probe = await new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    if (!probe.success) return "setpriv(1) does not run";
  } catch {
    return "setpriv(1) (util-linux) is not installed";
  }
  // The deno executable may live where `nobody` cannot reach it (below a home folder only its owner can
  // enter): a hard link, or a copy.
  const deno = `${dir}/deno`;
  try {
    await Deno.link(Deno.execPath(), deno);
  } catch {
    await Deno.copyFile(Deno.execPath(), deno);
  }
  await Deno.mkdir(`${dir}/cache`);
  await Deno.chown(`${dir}/cache`, 65534, 65534);
  await Deno.chmod(dir, 0o755);
  // The server's own modules must be readable by that user too: a checkout below a private folder is not.
  const server = repoPath("server.ts");
  const readable = await new Deno.Command("setpriv", {
    args: ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "test", "-r", server],
  }).output();
  if (!readable.success) return `user nobody cannot read ${server} (a folder above it is private)`;
  return {
    command: "setpriv",
    args: ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", deno],
    env: { DENO_DIR: `${dir}/cache` },
  };
}

/** Creates the file `name` (raw bytes: any encoding) in `dir` with `text`, through sh's printf. */
async function writeRawName(dir: string, name: Uint8Array, text: string): Promise<void> {
  const octal = Array.from(name, (b) => `\\${b.toString(8).padStart(3, "0")}`).join("");
  const r = await new Deno.Command("sh", {
    args: ["-c", `printf '%s' "$2" > "$(printf '${octal}')"`, "sh", "", text],
    cwd: dir,
  }).output();
  assert.ok(r.success, new TextDecoder().decode(r.stderr));
}

Deno.test("mirror --delete deletes nothing when the server cannot read a folder, fetches the rest, and exits 10; once readable again the run is complete", async (t) => {
  await using tools = await tempDir();
  const launcher = await unprivilegedLauncher(tools.path);
  if (typeof launcher === "string") {
    console.log(`skipped: the server cannot run as an unprivileged user here: ${launcher}`);
    return;
  }
  await using src = await tempDir();
  await using out = await tempDir();
  await Deno.chmod(src.path, 0o755);
  await Deno.mkdir(`${src.path}/b/deep`, { recursive: true });
  await Deno.mkdir(`${src.path}/c`);
  await Deno.writeTextFile(`${src.path}/a.txt`, "a\n");
  await Deno.writeTextFile(`${src.path}/b/y.txt`, "y\n");
  await Deno.writeTextFile(`${src.path}/b/deep/w.txt`, "w\n");
  await Deno.writeTextFile(`${src.path}/c/z.txt`, "z\n");
  const server = await startServer(
    ["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"],
    launcher ?? undefined,
  );
  const address = `127.0.0.1:${server.ports[0]}`;
  try {
    let r = await runClient(["mirror", address, ".", out.path, "--delete"]);
    assert.equal(r.code, 0, r.stderr);
    const before = await treeOf(out.path);

    await Deno.chmod(`${src.path}/b`, 0o000);
    await Deno.remove(`${src.path}/a.txt`); // really gone: still not deleted on a listing that is not whole
    await Deno.writeTextFile(`${src.path}/c/new.txt`, "new\n");
    r = await runClient(["mirror", address, ".", out.path, "--delete", "--json"]);
    assert.equal(r.code, 10, r.stderr);
    assert.match(
      r.stderr,
      /^ferry: the server's listing is incomplete: 1 left out \("b": not readable by the server \(EACCES\)\): what it listed was mirrored, and --delete was skipped\n/m,
    );
    assert.match(r.stderr, /mirror done: 1 updated, 1 unchanged, 0 deleted, 0 failed\n$/);
    assert.deepEqual(
      Object.fromEntries(jsonLines(r).map((l) => [l.path, l.status])),
      { "c/new.txt": "updated", "c/z.txt": "unchanged" },
    );
    assert.deepEqual(await treeOf(out.path), {
      ...before,
      "c/new.txt": await sha256File(`${src.path}/c/new.txt`),
    });
    // c/new.txt came with the listing, as new since the first run's listing.
    await logged(
      server,
      /request=LIST "" recursive stream since=[0-9]+ .* result=partial listed=2 inlined=1 known-folders=0 partial-folders=[01] left-out=1 first="b"/,
    );

    await t.step("once the folder is readable again, the listing is whole and --delete deletes", async () => {
      await Deno.chmod(`${src.path}/b`, 0o755);
      r = await runClient(["mirror", address, ".", out.path, "--delete", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(jsonLines(r).find((l) => l.path === "a.txt")?.status, "deleted");
      assert.deepEqual(await treeOf(out.path), await treeOf(src.path));
    });
  } finally {
    await Deno.chmod(`${src.path}/b`, 0o755);
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a name that is not valid UTF-8 is reported as left out, never dropped: mirror fetches the others, keeps local files, and exits 10", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/good.txt`, "good\n");
    await writeRawName(src, new Uint8Array([0x62, 0x61, 0x64, 0xff, 0x2e, 0x74, 0x78, 0x74]), "bad\n");
    await Deno.writeTextFile(`${out}/stale.txt`, "only here\n");
    const r = await runClient(["mirror", address, ".", out, "--delete"]);
    assert.equal(r.code, 10, r.stderr);
    assert.match(r.stderr, /1 left out \("bad\uFFFD\.txt": name is not valid UTF-8\)/);
    assert.deepEqual(Object.keys(await treeOf(out)).sort(), ["good.txt", "stale.txt"]);

    const conn = await RawConnection.open(Number(address.split(":")[1]));
    try {
      await conn.sendRequest({ op: "list", path: "" });
      const header = (await conn.readResponse()).json[0];
      assert.equal(header.truncated, true);
      assert.deepEqual(header.leftOut, {
        count: 1,
        first: [{ path: "bad\uFFFD.txt", reason: "name is not valid UTF-8" }],
      });
      assert.deepEqual((header.entries as { path: string }[]).map((e) => e.path), ["good.txt"]);
    } finally {
      conn.close();
    }
  });
});

/**
 * A client that reads a streamed listing slowly: a receive buffer of a few KiB, so the server's sends block
 * and its walk waits for the reader between frames. Blocking reads, bounded by SO_RCVTIMEO.
 */
class SlowListing implements Disposable {
  readonly fd: number;
  #buf = new Uint8Array(0);

  constructor(port: number, request: Record<string, unknown>) {
    this.fd = socket(C.AF_INET, C.SOCK_STREAM | C.SOCK_CLOEXEC);
    setsockoptInt(this.fd, C.SOL_SOCKET, C.SO_RCVBUF, 4096); // before connect: a small window
    setsockoptTimeval(this.fd, C.SOL_SOCKET, C.SO_RCVTIMEO, 20_000);
    connect(this.fd, encodeSockaddr({ family: C.AF_INET, host: "127.0.0.1", port }));
    const bytes = encodeRequest({ v: 1, op: "list", path: "", ...request });
    assert.equal(trySend(this.fd, bytes), bytes.byteLength);
  }

  /** The next frame: its type letter ("" for the end frame) and JSON. */
  next(): { type: string; json: Record<string, unknown> | null; length: number } {
    this.#fill(FRAME_HEADER_SIZE);
    const length = getFrameLength(this.#buf, 0);
    this.#fill(FRAME_HEADER_SIZE + length);
    const payload = this.#buf.slice(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + length);
    this.#buf = this.#buf.slice(FRAME_HEADER_SIZE + length);
    if (length === 0) return { type: "", json: null, length };
    return {
      type: String.fromCharCode(payload[0]),
      json: decodeJson(payload.subarray(1)) as Record<string, unknown>,
      length,
    };
  }

  #fill(n: number): void {
    const chunk = new Uint8Array(64 * 1024);
    while (this.#buf.byteLength < n) {
      const got = tryRecv(this.fd, chunk);
      if (got <= 0) throw new Error(got === 0 ? "the server closed the connection" : "no data for 20s");
      const merged = new Uint8Array(this.#buf.byteLength + got);
      merged.set(this.#buf);
      merged.set(chunk.subarray(0, got), this.#buf.byteLength);
      this.#buf = merged;
    }
  }

  /** Reads up to the end frame: the paths of the entries, and the Trailer. */
  rest(paths: string[]): Record<string, unknown> {
    let trailer: Record<string, unknown> | null = null;
    for (let frame = this.next(); frame.type !== ""; frame = this.next()) {
      if (frame.type === "L") paths.push(...(frame.json!.entries as { path: string }[]).map((e) => e.path));
      else if (frame.type === "T") trailer = frame.json;
      else throw new Error(`unexpected frame ${frame.type}: ${JSON.stringify(frame.json)}`);
    }
    assert.ok(trailer !== null, "a Trailer before the end frame");
    return trailer;
  }

  [Symbol.dispose](): void {
    close(this.fd);
  }
}

/**
 * Files in `a/` enough that their listing cannot all wait in the socket buffers: more than twice the most
 * the kernel lets a TCP send buffer grow to (tcp_wmem's maximum), at about 300 bytes an entry. Fewer, and
 * a busy machine can let the worker finish the walk before the test acts in the middle of it.
 */
async function pausingCount(): Promise<number> {
  const wmem = (await readFile("/proc/sys/net/ipv4/tcp_wmem", "utf8")).trim().split(/\s+/).map(Number);
  return Math.max(20_000, Math.ceil((2 * wmem[2]) / 300));
}

/** `a/` with `count` files of long names (a listing of some MiB), then `b/` and `c/` with one file each. */
async function wideTree(src: string, count: number): Promise<void> {
  await Deno.mkdir(`${src}/a`);
  const pad = "x".repeat(240);
  for (let i = 0; i < count; i++) Deno.writeTextFileSync(`${src}/a/${pad}-${i}`, "");
  for (const dir of ["b", "c"]) {
    await Deno.mkdir(`${src}/${dir}`);
    await Deno.writeTextFile(`${src}/${dir}/${dir}.txt`, `${dir}\n`);
  }
}

/** Reads a slow listing's frames up to its first Entries frame: the walk is then inside `a/`. */
function untilFirstBatch(listing: SlowListing, paths: string[]): void {
  const { requestId, walkedAt, ...header } = listing.next().json!;
  assert.equal(typeof requestId, "string");
  assert.match(String(walkedAt), /^[0-9]+$/);
  assert.deepEqual(header, { v: 1, status: "ok", stream: true });
  const first = listing.next();
  assert.equal(first.type, "L");
  paths.push(...(first.json!.entries as { path: string }[]).map((e) => e.path));
}

Deno.test("a folder moved away while the walk is elsewhere is left out as removed during the listing, not silently missing", async () => {
  await withServer(async ({ src, server }) => {
    const count = await pausingCount();
    await wideTree(src, count);
    using listing = new SlowListing(server.ports[0], { recursive: true, stream: true });
    const paths: string[] = [];
    untilFirstBatch(listing, paths);
    await Deno.rename(`${src}/b`, `${src}/0b`); // before a/ in the order: its files are not listed
    const trailer = listing.rest(paths);
    assert.equal(trailer.truncated, true);
    assert.deepEqual(trailer.leftOut, {
      count: 1,
      first: [{ path: "b", reason: "removed during the listing" }],
    });
    assert.equal(trailer.listed, paths.length);
    assert.equal(paths.length, count + 1);
    assert.equal(paths.at(-1), "c/c.txt");
  });
});

/** The worker's soft RLIMIT_NOFILE, from /proc. */
async function softNoFile(pid: number): Promise<string> {
  const limits = await readFile(`/proc/${pid}/limits`, "utf8");
  return /^Max open files\s+(\d+|unlimited)/m.exec(limits)![1];
}

async function prlimit(pid: number, soft: string): Promise<void> {
  const r = await new Deno.Command("prlimit", { args: [`--pid=${pid}`, `--nofile=${soft}:`] }).output();
  assert.ok(r.success, new TextDecoder().decode(r.stderr));
}

Deno.test("opens that fail with EMFILE in the middle of a walk leave out what they could not open, and say why", async (t) => {
  try {
    await new Deno.Command("prlimit", { args: ["--version"], stdout: "null" }).output();
  } catch {
    console.log("skipped: prlimit(1) (util-linux) is not installed");
    return;
  }
  await withServer(async ({ src, server }) => {
    const count = await pausingCount();
    await wideTree(src, count);
    const [worker] = await childPids(server.pid);
    using listing = new SlowListing(server.ports[0], { recursive: true, stream: true });
    const paths: string[] = [];
    untilFirstBatch(listing, paths);
    // From now on the worker cannot open anything: the limit is below every fd it holds but 0, 1 and 2.
    // (Its lowest free fd number would not do: the walk closes the folder it has read meanwhile, which
    // frees a lower number.)
    const soft = await softNoFile(worker);
    await prlimit(worker, "3");
    let trailer: Record<string, unknown>;
    try {
      trailer = listing.rest(paths);
    } finally {
      await prlimit(worker, soft);
    }
    const leftOut = trailer.leftOut as { count: number; first: { path: string; reason: string }[] };
    assert.equal(trailer.truncated, true);
    assert.ok(leftOut.count >= 2, `left out: ${JSON.stringify(leftOut)}`);
    assert.ok(leftOut.first.every((e) => e.reason === "cannot open: EMFILE"), JSON.stringify(leftOut));
    assert.equal(leftOut.first.at(-1)?.path, leftOut.count <= 16 ? "c" : leftOut.first.at(-1)?.path);
    assert.ok(!paths.includes("b/b.txt") && !paths.includes("c/c.txt"));
    assert.equal(
      paths.length + leftOut.count,
      count + 2,
      "every entry of a/ listed or left out; b, c left out",
    );
    await logged(server, /result=partial listed=\d+ left-out=\d+ first=".*" \(cannot open: EMFILE\)/);

    await t.step("with the limit back, the next listing on the same worker is whole", async () => {
      const conn = await RawConnection.open(server.ports[0]);
      try {
        await conn.sendRequest({ op: "list", path: "b" });
        const header = (await conn.readResponse()).json[0];
        assert.deepEqual(header.leftOut, { count: 0, first: [] });
        assert.equal(header.truncated, false);
      } finally {
        conn.close();
      }
    });
  });
});

Deno.test("a streamed listing of 12,000 files has no cap and mirrors completely; one that is not streamed stops at 10,000 and says so", async () => {
  await withServer(async ({ src, out, address, server }) => {
    // Spread over folders, with identical local copies: the client then only compares, never publishes.
    for (let d = 0; d < 600; d++) {
      await Deno.mkdir(`${src}/d${d}`);
      await Deno.mkdir(`${out}/d${d}`);
      for (let i = 0; i < 20; i++) {
        Deno.writeTextFileSync(`${src}/d${d}/f${i}`, `${d}.${i}\n`);
        Deno.writeTextFileSync(`${out}/d${d}/f${i}`, `${d}.${i}\n`);
      }
    }
    await Deno.writeTextFile(`${out}/d0/extra`, "not on the server\n");

    const conn = await RawConnection.open(server.ports[0]);
    try {
      await conn.sendRequest({ op: "list", path: "", recursive: true });
      const header = (await conn.readResponse()).json[0];
      assert.equal((header.entries as unknown[]).length, 10_000);
      assert.equal(header.truncated, true);
      const leftOut = header.leftOut as { count: number; first: { path: string; reason: string }[] };
      assert.equal(leftOut.count, 1);
      assert.match(leftOut.first[0].reason, /^more than 10000 entries in one Header/);

      await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true });
      let frames = 0;
      let listed = 0;
      for (;;) {
        const frame = await conn.readFrame();
        if (frame === null || frame.length === 0) break;
        const type = String.fromCharCode(frame.payload[0]);
        if (type !== "L") continue;
        frames++;
        assert.ok(frame.length - 1 <= LIST_BATCH_BYTES);
        listed += (decodeJson(frame.payload.subarray(1)) as { entries: unknown[] }).entries.length;
      }
      assert.equal(listed, 12_000);
      assert.ok(frames > 1, "the entries came in several frames");
    } finally {
      conn.close();
    }

    const r = await runClient(["mirror", address, ".", out, "--delete", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const lines = jsonLines(r);
    assert.equal(lines.filter((l) => l.status === "unchanged").length, 12_000);
    assert.deepEqual(lines.filter((l) => l.status !== "unchanged").map((l) => [l.path, l.status]), [
      ["d0/extra", "deleted"],
    ]);
    // The state records every file, though the run set most of its new lines aside in a file meanwhile.
    const recorded = (await Deno.readTextFile(`${out}/.ferry/state`)).split("\n").slice(1)
      .filter((line) => line !== "" && !/^(dir|since|known) /.test(line))
      .map((line) => line.split("\t")[3]);
    assert.equal(recorded.length, 12_000);
    assert.equal(new Set(recorded).size, 12_000);
    assert.ok(recorded.every((path) => /^d[0-9]+\/f[0-9]+$/.test(path)));
    assert.deepEqual([...Deno.readDirSync(`${out}/.ferry`)].map((e) => e.name), ["state"]);
  });
});

Deno.test("a brief listing has each entry without its mtime and mode, and nothing else changed; a brief that is not a boolean is refused", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.mkdir(`${src}/d`);
    await Deno.writeTextFile(`${src}/top.txt`, "top\n");
    await Deno.writeTextFile(`${src}/d/inner.txt`, "inner\n");
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const entriesOf = async (request: Record<string, unknown>) => {
        await conn.sendRequest({ op: "list", path: "", recursive: true, ...request });
        return (await conn.readResponse()).json[0].entries as Record<string, unknown>[];
      };
      const full = await entriesOf({});
      assert.deepEqual(full.map((e) => e.path).sort(), ["d/inner.txt", "top.txt"]);
      assert.ok(full.every((e) => typeof e.mtimeNs === "string" && typeof e.mode === "number"));
      const brief = await entriesOf({ brief: true });
      assert.deepEqual(brief, full.map(({ mtimeNs: _m, mode: _mode, ...rest }) => rest));
      await conn.sendRequest({ op: "list", path: "", ...{ brief: "yes" } as Record<string, unknown> });
      const refused = (await conn.readResponse()).json[0];
      assert.equal(refused.code, "BAD_REQUEST");
      assert.match(String(refused.message), /'brief' is not a boolean/);
    } finally {
      conn.close();
    }
  });
});

Deno.test("with folders, a recursive listing names each empty folder below the listed one, in order; not without it, nor one holding anything", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.mkdir(`${src}/a/empty`, { recursive: true });
    await Deno.mkdir(`${src}/a/full`);
    await Deno.writeTextFile(`${src}/a/full/f.txt`, "f\n");
    await Deno.mkdir(`${src}/b/c/d`, { recursive: true }); // empty only at its deepest
    await Deno.mkdir(`${src}/fifo-only`);
    await new Deno.Command("mkfifo", { args: [`${src}/fifo-only/pipe`] }).output(); // not served: not empty either
    await Deno.writeTextFile(`${src}/z.txt`, "z\n");
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const entriesOf = async (request: Record<string, unknown>) => {
        await conn.sendRequest({ op: "list", path: "", recursive: true, brief: true, ...request });
        return (await conn.readResponse()).json[0].entries as Record<string, unknown>[];
      };
      const shown = (entries: Record<string, unknown>[]) => entries.map((e) => e.emptyFolder ?? e.path);
      assert.deepEqual(shown(await entriesOf({})), ["a/full/f.txt", "z.txt"]);
      assert.deepEqual(shown(await entriesOf({ folders: true })), [
        "a/empty",
        "a/full/f.txt",
        "b/c/d",
        "z.txt",
      ]);
      assert.deepEqual(shown(await entriesOf({ folders: true, recursive: false })), ["z.txt"]);
      // The folder listed is not named, however empty; one below it is, by its path from the root.
      await conn.sendRequest({ op: "list", path: "b", recursive: true, folders: true });
      assert.deepEqual((await conn.readResponse()).json[0].entries, [{ emptyFolder: "b/c/d" }]);
      await conn.sendRequest({ op: "list", path: "a/empty", recursive: true, folders: true });
      assert.deepEqual((await conn.readResponse()).json[0].entries, []);
      await conn.sendRequest({
        op: "list",
        path: "",
        recursive: true,
        ...{ folders: 1 } as Record<string, unknown>,
      });
      const refused = (await conn.readResponse()).json[0];
      assert.equal(refused.code, "BAD_REQUEST");
      assert.match(String(refused.message), /'folders' is not a boolean/);
    } finally {
      conn.close();
    }
  });
});

/** The index of the first log line matching `pattern`. */
function lineOf(server: TestServer, pattern: RegExp): number {
  return server.log.findIndex((l) => pattern.test(l));
}

Deno.test("a worker walking a large tree answers a ping on another connection before the walk is done", async () => {
  await withServer(async ({ src, server }) => {
    // Many folders and few files: a long walk whose answer is small, sent as soon as the walk ends.
    for (let d = 0; d < 60; d++) {
      for (let e = 0; e < 50; e++) await Deno.mkdir(`${src}/d${d}/e${e}`, { recursive: true });
    }
    await Deno.writeTextFile(`${src}/d0/e0/only.txt`, "one\n");
    const walker = await RawConnection.open(server.ports[0]);
    const pinger = await RawConnection.open(server.ports[0]);
    try {
      // Both connections are the worker's before the walk starts.
      for (const conn of [walker, pinger]) {
        await conn.sendRequest({ op: "ping" });
        assert.equal((await conn.readResponse()).types, "H");
      }
      await walker.sendRequest({ op: "list", path: "", recursive: true });
      await pinger.sendRequest({ op: "ping" });
      assert.equal((await pinger.readResponse()).types, "H");
      const listing = (await walker.readResponse()).json[0];
      assert.deepEqual((listing.entries as { path: string }[]).map((e) => e.path), ["d0/e0/only.txt"]);
      await logged(server, /request=PING/, 3);
      await logged(server, /request=LIST/);
      const lastPing = server.log.findLastIndex((l) => /request=PING/.test(l));
      assert.ok(lastPing < lineOf(server, /request=LIST/), "the ping was answered while the walk went on");
    } finally {
      walker.close();
      pinger.close();
    }
  }, ["--log-health"]);
});

Deno.test("a streamed listing cut off before its trailer is never taken for whole: mirror deletes nothing and exits 6", async () => {
  await using out = await tempDir();
  await Deno.writeTextFile(`${out.path}/keep.txt`, "only here\n");
  // A peer that answers like a server whose worker dies after the first batch of a listing.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: Record<string, unknown>[] = [];
  const peer = (async () => {
    using conn = await listener.accept();
    requests.push(await readRequest(conn));
    const entry = { path: "a.txt", size: 2, mtimeNs: "1", mode: 420 };
    for (
      const frame of [
        encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", stream: true }),
        encodeJsonFrame(FrameType.Entries, { entries: [entry] }),
      ]
    ) {
      await conn.write(frame);
    }
  })();
  const r = await runClient([
    "mirror",
    `127.0.0.1:${listener.addr.port}`,
    ".",
    out.path,
    "--delete",
    "--retries",
    "0",
  ]);
  await peer;
  assert.equal(requests[0].stream, true);
  assert.equal(r.code, 6, r.stderr);
  assert.match(
    r.stderr,
    /^ferry: protocol error: connection closed by the server in the middle of the response \(expected the next frame of the listing of "\/"\)\n$/,
  );
  assert.equal(await Deno.readTextFile(`${out.path}/keep.txt`), "only here\n");
});

Deno.test("an entry's length in UTF-8 is counted as TextEncoder writes it, whatever its characters", () => {
  const texts = [
    "",
    '{"path":"a/b.txt","size":4}',
    "caf\u00e9/\u65e5\u672c/\u{1f600}.txt",
    "\u07ff\u0800\uffff",
    "lone \ud800 high, lone \udc00 low, at the end \ud83d",
    "x".repeat(5000),
  ];
  for (const text of texts) {
    assert.equal(utf8Length(text), new TextEncoder().encode(text).byteLength, JSON.stringify(text));
  }
});
