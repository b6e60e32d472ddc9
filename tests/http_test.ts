/**
 * HTTP/1.1 on the request-mode port, with the real tools: curl (GET, HEAD, ranges, -z, --fail), wget -c
 * (resuming a partial file), and raw sockets for keep-alive, pipelining, HTTP/1.0, every error status and
 * the path-attack corpus, plain and percent-encoded. Real server processes, real sockets, real files. A test
 * whose tool is missing says so and skips.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { MAX_PATH_BYTES } from "../framing.ts";
import { MAX_HTTP_FIELDS, MAX_HTTP_HEAD, MAX_HTTP_REQUEST_LINE } from "../http_wire.ts";
import {
  childPids,
  makeFile,
  RawConnection,
  runClient,
  sparseFile,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const OK_SIZE = 5000;
const BIG_SIZE = 3 * 1024 * 1024;

/** True if `tool` runs; otherwise prints why the calling test skips. */
async function have(tool: string, test: string): Promise<boolean> {
  try {
    await new Deno.Command(tool, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    console.warn(`http_test: ${tool} is not installed: "${test}" skipped`);
    return false;
  }
}

interface Tree {
  root: string;
  ok: Uint8Array;
  big: Uint8Array;
}

/**
 * served/ok.txt, served/big.bin (large enough to go by sendfile), served/sub/, served/escape and
 * served/escape-abs (symlinks to outside/secret.txt), served/"a b é.txt"; outside/secret.txt.
 */
async function makeTree(base: string): Promise<Tree> {
  const root = `${base}/served`;
  await Deno.mkdir(`${root}/sub`, { recursive: true });
  await Deno.mkdir(`${base}/outside`);
  await Deno.writeTextFile(`${base}/outside/secret.txt`, "secret\n");
  await Deno.symlink("../outside/secret.txt", `${root}/escape`);
  await Deno.symlink(`${base}/outside/secret.txt`, `${root}/escape-abs`);
  await Deno.writeTextFile(`${root}/a b é.txt`, "spaced\n");
  const ok = await Deno.readFile(await makeFile(root, "ok.txt", OK_SIZE));
  const big = await Deno.readFile(await makeFile(root, "big.bin", BIG_SIZE));
  return { root, ok, big };
}

/** Runs `fn` against a one-worker server on a fresh tree; the server must then stop with exit 0. */
async function withServer(
  extraArgs: string[],
  fn: (port: number, tree: Tree, server: TestServer) => Promise<void>,
): Promise<void> {
  await using dir = await tempDir();
  const tree = await makeTree(dir.path);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    tree.root,
    "--workers",
    "1",
    ...extraArgs,
  ]);
  try {
    await fn(server.ports[0], tree, server);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
}

/** An HTTP response as read from a socket. */
interface Response {
  status: number;
  headers: Map<string, string>;
  body: Uint8Array;
}

/** A TCP connection speaking HTTP/1.1 by hand: requests written as given, responses read by Content-Length. */
class HttpSocket {
  #buf = new Uint8Array(0);
  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(port: number): Promise<HttpSocket> {
    return new HttpSocket(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  async send(request: string | Uint8Array): Promise<void> {
    const bytes = typeof request === "string" ? encoder.encode(request) : request;
    for (let done = 0; done < bytes.byteLength;) done += await this.conn.write(bytes.subarray(done));
  }

  async #fill(n: number): Promise<boolean> {
    while (this.#buf.byteLength < n) {
      const chunk = new Uint8Array(256 * 1024);
      const got = await this.conn.read(chunk).catch(() => null);
      if (got === null) return false;
      const merged = new Uint8Array(this.#buf.byteLength + got);
      merged.set(this.#buf);
      merged.set(chunk.subarray(0, got), this.#buf.byteLength);
      this.#buf = merged;
    }
    return true;
  }

  /** Reads one response; `head` for the answer to a HEAD (no body). Null if the connection ended first. */
  async response(head = false): Promise<Response | null> {
    let end = -1;
    while ((end = findBlankLine(this.#buf)) < 0) if (!await this.#fill(this.#buf.byteLength + 1)) return null;
    const lines = decoder.decode(this.#buf.subarray(0, end)).split("\r\n");
    this.#buf = this.#buf.slice(end + 4);
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(lines[0])?.[1]);
    assert.ok(!Number.isNaN(status), `a status line: ${JSON.stringify(lines[0])}`);
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
    }
    const length = head || status === 304 ? 0 : Number(headers.get("content-length") ?? "0");
    if (!await this.#fill(length)) throw new Error(`the connection ended inside a body of ${length} bytes`);
    const body = this.#buf.slice(0, length);
    this.#buf = this.#buf.slice(length);
    return { status, headers, body };
  }

  /** True if the server closes the connection without sending anything more. */
  async closedByPeer(): Promise<boolean> {
    return !await this.#fill(this.#buf.byteLength + 1);
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

function findBlankLine(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.byteLength; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

/** `GET path` (HTTP/1.1) with extra header lines. */
const get = (path: string, extra = "", method = "GET") =>
  `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;

/**
 * One request on a connection of its own; returns the response and, when it says `Connection: close`,
 * whether the server did close afterwards (a kept-alive connection would only close at the idle timeout).
 */
async function once(port: number, request: string | Uint8Array, head = false) {
  const s = await HttpSocket.open(port);
  try {
    await s.send(request);
    const response = await s.response(head);
    assert.ok(response !== null, "a response arrives");
    const closes = response.headers.get("connection") === "close";
    return { ...response, closed: closes && await s.closedByPeer() };
  } finally {
    s.close();
  }
}

/** Runs curl; its exit code, stdout (bytes) and stderr. */
async function curl(args: string[]) {
  const out = await new Deno.Command("curl", { args: ["-s", "-S", ...args], stdin: "null" }).output();
  return { code: out.code, stdout: out.stdout, stderr: decoder.decode(out.stderr) };
}

/** Response headers as curl -D - prints them, by lower-case name (the last response's). */
function curlHeaders(text: string): { status: number; headers: Map<string, string> } {
  const blocks = text.split("\r\n\r\n").filter((b) => b.startsWith("HTTP/"));
  const lines = blocks[blocks.length - 1].split("\r\n");
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
  }
  return { status: Number(lines[0].split(" ")[1]), headers };
}

const sha256Base64 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("base64");

Deno.test("http: curl GET and HEAD get the file, Content-Length, a strong ETag (ferry's etag), Last-Modified, Accept-Ranges and Repr-Digest", async () => {
  if (!await have("curl", "curl GET and HEAD")) return;
  await withServer([], async (port, tree) => {
    const url = `http://127.0.0.1:${port}`;
    const got = await curl(["-D", "/dev/stderr", `${url}/ok.txt`]);
    assert.equal(got.code, 0, got.stderr);
    assert.deepEqual(got.stdout, tree.ok);
    const { status, headers } = curlHeaders(got.stderr);
    assert.equal(status, 200);
    assert.equal(headers.get("content-length"), String(OK_SIZE));
    assert.equal(headers.get("accept-ranges"), "bytes");
    assert.equal(headers.get("repr-digest"), `sha-256=:${sha256Base64(tree.ok)}:`);
    const mtime = Deno.statSync(`${tree.root}/ok.txt`).mtime!;
    assert.equal(
      headers.get("last-modified"),
      new Date(Math.floor(mtime.getTime() / 1000) * 1000).toUTCString(),
    );
    // The ETag is ferry's own etag for this version, quoted: strong, and the same for HEAD.
    const raw = await RawConnection.open(port);
    await raw.sendRequest({ op: "stat", path: "ok.txt" });
    const stat = await raw.readResponse();
    raw.close();
    assert.equal(headers.get("etag"), `"${stat.json[0].etag}"`);

    const head = await curl(["-I", `${url}/ok.txt`]);
    assert.equal(head.code, 0, head.stderr);
    const h = curlHeaders(decoder.decode(head.stdout));
    assert.equal(h.status, 200);
    assert.equal(h.headers.get("content-length"), String(OK_SIZE));
    assert.equal(h.headers.get("etag"), headers.get("etag"));

    // A large file goes by sendfile; its digest appears once the server knows its SHA-256 (ferry's get
    // has it hashed), never a wrong one.
    const big = await curl([`${url}/big.bin`]);
    assert.equal(big.code, 0, big.stderr);
    assert.deepEqual(big.stdout, tree.big);
    const fetched = await runClient(["get", `127.0.0.1:${port}`, "big.bin", "-o", "/dev/null", "-q"]);
    assert.equal(fetched.code, 0, fetched.stderr);
    const bigHead = curlHeaders(decoder.decode((await curl(["-I", `${url}/big.bin`])).stdout));
    assert.equal(bigHead.headers.get("repr-digest"), `sha-256=:${sha256Base64(tree.big)}:`);
    assert.equal(bigHead.headers.get("content-length"), String(BIG_SIZE));

    // A percent-encoded name.
    const spaced = await curl([`${url}/a%20b%20%C3%A9.txt`]);
    assert.equal(decoder.decode(spaced.stdout), "spaced\n");
  });
});

Deno.test("http: curl ranges get 206 with Content-Range and exactly those bytes; several ranges get the whole file; none inside gets 416", async () => {
  if (!await have("curl", "curl ranges")) return;
  await withServer([], async (port, tree) => {
    const url = `http://127.0.0.1:${port}/big.bin`;
    const cases: [string, number, number][] = [
      ["0-99", 0, 100],
      ["1048576-2097151", 1048576, 2097152], // one piece of a P2P engine's origin fetch
      [`${BIG_SIZE - 10}-`, BIG_SIZE - 10, BIG_SIZE],
      ["-4096", BIG_SIZE - 4096, BIG_SIZE],
      [`3000000-${BIG_SIZE + 100}`, 3000000, BIG_SIZE], // clipped to the end
    ];
    for (const [range, start, end] of cases) {
      const r = await curl(["-r", range, "-D", "/dev/stderr", url]);
      assert.equal(r.code, 0, r.stderr);
      const { status, headers } = curlHeaders(r.stderr);
      assert.equal(status, 206, range);
      assert.equal(headers.get("content-range"), `bytes ${start}-${end - 1}/${BIG_SIZE}`);
      assert.equal(headers.get("content-length"), String(end - start));
      assert.deepEqual(r.stdout, tree.big.subarray(start, end), range);
    }
    const several = await curl(["-r", "0-9,100-109", "-D", "/dev/stderr", url]);
    assert.equal(curlHeaders(several.stderr).status, 200);
    assert.deepEqual(several.stdout, tree.big);
    const beyond = await curl(["-r", `${BIG_SIZE}-`, "-D", "/dev/stderr", "-o", "/dev/null", url]);
    const b = curlHeaders(beyond.stderr);
    assert.equal(b.status, 416);
    assert.equal(b.headers.get("content-range"), `bytes */${BIG_SIZE}`);
    // The small-reply path (one buffer) serves ranges too.
    const small = await curl(["-r", "10-19", `http://127.0.0.1:${port}/ok.txt`]);
    assert.deepEqual(small.stdout, tree.ok.subarray(10, 20));
  });
});

Deno.test("http: curl -z (If-Modified-Since) gets 304 for an unchanged file and the file when it is newer; If-None-Match and If-Range follow the ETag", async () => {
  if (!await have("curl", "curl -z")) return;
  await withServer([], async (port, tree) => {
    const url = `http://127.0.0.1:${port}/ok.txt`;
    const mtime = Deno.statSync(`${tree.root}/ok.txt`).mtime!;
    const code = async (args: string[]) =>
      decoder.decode((await curl(["-o", "/dev/null", "-w", "%{http_code}", ...args, url])).stdout);
    assert.equal(await code(["-z", new Date(mtime.getTime() + 1000).toUTCString()]), "304");
    assert.equal(await code(["-z", new Date(mtime.getTime() - 86_400_000).toUTCString()]), "200");
    const etag = curlHeaders(decoder.decode((await curl(["-I", url])).stdout)).headers.get("etag")!;
    assert.equal(await code(["-H", `If-None-Match: ${etag}`]), "304");
    assert.equal(await code(["-H", `If-None-Match: "other", W/${etag}`]), "304");
    assert.equal(await code(["-H", `If-None-Match: "other"`]), "200");
    assert.equal(await code(["-H", `If-Match: ${etag}`]), "200");
    assert.equal(await code(["-H", `If-Match: "other"`]), "412");
    // If-Range naming this version: the range; naming another: the whole file.
    assert.equal(await code(["-r", "0-9", "-H", `If-Range: ${etag}`]), "206");
    assert.equal(await code(["-r", "0-9", "-H", `If-Range: "other"`]), "200");
    // The file changes: the old ETag no longer matches, and the new one differs.
    await Deno.writeTextFile(`${tree.root}/ok.txt`, "changed\n");
    assert.equal(await code(["-H", `If-None-Match: ${etag}`]), "200");
    assert.notEqual(curlHeaders(decoder.decode((await curl(["-I", url])).stdout)).headers.get("etag"), etag);
  });
});

Deno.test("http: curl --fail exits 22 on 404 and on 403, and the server goes on serving", async () => {
  if (!await have("curl", "curl --fail")) return;
  await withServer([], async (port, tree) => {
    for (const path of ["missing.txt", "sub/", "escape"]) {
      const r = await curl(["--fail", "-o", "/dev/null", `http://127.0.0.1:${port}/${path}`]);
      assert.equal(r.code, 22, `${path}: ${r.stderr}`);
      assert.match(r.stderr, /40[34]/);
    }
    assert.deepEqual((await curl(["--fail", `http://127.0.0.1:${port}/ok.txt`])).stdout, tree.ok);
  });
});

Deno.test("http: wget -c resumes a partial file with a Range request and ends with the whole file", async () => {
  if (!await have("wget", "wget -c")) return;
  await using out = await tempDir();
  await withServer([], async (port, tree, server) => {
    const partial = 1_000_000;
    await Deno.writeFile(`${out.path}/big.bin`, tree.big.subarray(0, partial));
    const r = await new Deno.Command("wget", {
      args: ["-q", "-c", "-O", `${out.path}/big.bin`, `http://127.0.0.1:${port}/big.bin`],
      stdin: "null",
    }).output();
    assert.equal(r.code, 0, decoder.decode(r.stderr));
    assert.deepEqual(await Deno.readFile(`${out.path}/big.bin`), tree.big);
    assert.match(
      await server.waitForLog(/HTTP GET "big\.bin" range=/),
      new RegExp(`range=${partial}-${BIG_SIZE - 1} `),
    );
  });
});

Deno.test("http: keep-alive and pipelining: five requests in one write are answered in order on one connection, Connection: close ends it", async () => {
  await withServer([], async (port, tree) => {
    const s = await HttpSocket.open(port);
    try {
      await s.send(
        get("/ok.txt") + get("/ok.txt", "", "HEAD") + get("/big.bin", "Range: bytes=100-199\r\n") +
          get("/missing.txt") + get("/big.bin"),
      );
      const a = (await s.response())!;
      assert.equal(a.status, 200);
      assert.deepEqual(a.body, tree.ok);
      const b = (await s.response(true))!;
      assert.equal(b.status, 200);
      assert.equal(b.headers.get("content-length"), String(OK_SIZE));
      const c = (await s.response())!;
      assert.equal(c.status, 206);
      assert.deepEqual(c.body, tree.big.subarray(100, 200));
      const d = (await s.response())!;
      assert.equal(d.status, 404);
      const e = (await s.response())!;
      assert.equal(e.status, 200);
      assert.deepEqual(e.body, tree.big);
      // Every answer, errors too, carries its own request id.
      const ids = [a, b, c, d, e].map((r) => r.headers.get("x-request-id") ?? "");
      for (const id of ids) assert.match(id, /^[a-z2-7]{8}-[0-9a-z]+$/);
      assert.equal(new Set(ids).size, 5);
      // Still open: one more, asking to close.
      await s.send(get("/ok.txt", "Connection: close\r\n"));
      const f = (await s.response())!;
      assert.equal(f.headers.get("connection"), "close");
      assert.deepEqual(f.body, tree.ok);
      assert.ok(await s.closedByPeer(), "Connection: close closes after the answer");
    } finally {
      s.close();
    }
  });
});

Deno.test("http: HTTP/1.0 closes after the answer unless it asks for keep-alive", async () => {
  await withServer([], async (port, tree) => {
    const plain = await once(port, "GET /ok.txt HTTP/1.0\r\n\r\n");
    assert.equal(plain.status, 200);
    assert.deepEqual(plain.body, tree.ok);
    assert.ok(plain.closed);
    const s = await HttpSocket.open(port);
    try {
      for (let i = 0; i < 2; i++) {
        await s.send("GET /ok.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        const r = (await s.response())!;
        assert.equal(r.headers.get("connection"), "keep-alive");
        assert.deepEqual(r.body, tree.ok);
      }
    } finally {
      s.close();
    }
  });
});

Deno.test("http: every error status, each closing the connection or not as it should, and the server goes on serving", async () => {
  await withServer(["--idle-timeout", "1"], async (port, tree) => {
    const longPath = "/" + "d/".repeat(MAX_PATH_BYTES / 2) + "x";
    const manyFields = Array.from({ length: MAX_HTTP_FIELDS + 1 }, (_, i) => `X-${i}: y\r\n`).join("");
    const cases: [string, string, number, boolean][] = [
      ["no Host in HTTP/1.1", "GET /ok.txt HTTP/1.1\r\n\r\n", 400, true],
      ["a request line of two words", "GET /ok.txt\r\nHost: x\r\n\r\n", 400, true],
      ["a header line without a colon", get("/ok.txt", "Bad header\r\n"), 400, true],
      ["a malformed %-escape", get("/ok%zz.txt"), 400, true],
      ["a path that is not UTF-8", get("/ok%ff.txt"), 400, true],
      ["a directory", get("/sub/"), 403, false],
      ["the root", get("/"), 403, false],
      ["a symlink leading outside", get("/escape"), 403, false],
      ["a missing file", get("/missing.txt"), 404, false],
      ["POST", get("/ok.txt", "", "POST"), 405, false],
      ["DELETE", get("/ok.txt", "", "DELETE"), 405, false],
      ["POST with content", get("/ok.txt", "Content-Length: 2\r\n", "POST") + "hi", 405, true],
      ["a body", get("/ok.txt", "Content-Length: 5\r\n") + "hello", 413, true],
      ["a chunked body", get("/ok.txt", "Transfer-Encoding: chunked\r\n") + "0\r\n\r\n", 413, true],
      ["a path over 4096 bytes", get(longPath), 414, false],
      ["a request line over the limit", get("/" + "x".repeat(MAX_HTTP_REQUEST_LINE)), 414, true],
      ["a range outside the file", get("/ok.txt", `Range: bytes=${OK_SIZE}-\r\n`), 416, false],
      ["too many header fields", get("/ok.txt", manyFields), 431, true],
      ["a head over the limit", get("/ok.txt", `X-Big: ${"y".repeat(MAX_HTTP_HEAD)}\r\n`), 431, true],
      ["HTTP/2.0", "GET /ok.txt HTTP/2.0\r\nHost: x\r\n\r\n", 505, true],
    ];
    for (const [what, request, status, closes] of cases) {
      const s = await HttpSocket.open(port);
      try {
        await s.send(request);
        const r = await s.response();
        assert.ok(r !== null, `${what}: a response`);
        assert.equal(r.status, status, `${what}: ${decoder.decode(r.body)}`);
        if (status === 405) assert.equal(r.headers.get("allow"), "GET, HEAD");
        if (status === 416) assert.equal(r.headers.get("content-range"), `bytes */${OK_SIZE}`);
        if (closes) {
          assert.equal(r.headers.get("connection"), "close", what);
          assert.ok(await s.closedByPeer(), `${what}: the server closes`);
        } else {
          await s.send(get("/ok.txt"));
          assert.deepEqual((await s.response())!.body, tree.ok, `${what}: the connection goes on`);
        }
      } finally {
        s.close();
      }
    }
    // 408: a head that does not arrive whole within --idle-timeout.
    const slow = await HttpSocket.open(port);
    try {
      await slow.send("GET /ok.txt HTTP/1.1\r\nHost: x\r\n");
      const r = await slow.response();
      assert.equal(r?.status, 408);
      assert.ok(await slow.closedByPeer());
    } finally {
      slow.close();
    }
    // An idle keep-alive connection is closed without a word once the timeout passes.
    const idle = await HttpSocket.open(port);
    try {
      await idle.send(get("/ok.txt"));
      assert.equal((await idle.response())?.status, 200);
      assert.ok(await idle.closedByPeer(), "closed, and nothing sent");
    } finally {
      idle.close();
    }
    assert.deepEqual((await once(port, get("/ok.txt"))).body, tree.ok);
  });
});

Deno.test("http: the path-attack corpus, plain and percent-encoded, never reads outside the root and never stops the worker", async () => {
  await withServer([], async (port, tree, server) => {
    const corpus = [
      "..",
      "../x",
      "a/../../x",
      "sub/../ok.txt",
      "../served/ok.txt",
      "sub/..",
      "/etc/passwd",
      "/",
      "ok.txt\0.jpg",
      "escape",
      "escape-abs",
      "../outside/secret.txt",
      "sub/../../outside/secret.txt",
      "d/".repeat(MAX_PATH_BYTES / 2) + "x",
    ];
    const encodeAll = (p: string) =>
      [...encoder.encode(p)].map((b) => `%${b.toString(16).padStart(2, "0")}`).join("");
    const targets = corpus.flatMap((p) => [
      "/" + p.replaceAll("\0", "%00"),
      "/" + encodeAll(p),
      "/" + encodeAll(p).toUpperCase(),
      "/" + p.replaceAll("..", "%2e%2e").replaceAll("/", "%2f").replaceAll("\0", "%00"),
      `http://127.0.0.1/${encodeAll(p)}`,
    ]);
    const s = await HttpSocket.open(port);
    try {
      for (const target of targets) {
        await s.send(get(target));

        const r = (await s.response())!;
        assert.ok([400, 403, 404, 414].includes(r.status), `${target.slice(0, 60)}: ${r.status}`);
        assert.ok(!decoder.decode(r.body).includes("secret\n"), target);
        if (r.status === 400) {
          // Malformed: closed; the next target goes on a new connection.
          assert.ok(await s.closedByPeer());
          s.close();
          Object.assign(s, await HttpSocket.open(port));
        }
      }
    } finally {
      s.close();
    }
    // Raw bytes outside the request target's grammar, and a request of random bytes after a method.
    for (const raw of ["GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", "GET \xff\xfe HTTP/1.1\r\n\r\n", "GETX"]) {
      const s2 = await HttpSocket.open(port);
      await s2.send(new Uint8Array([...raw].map((c) => c.charCodeAt(0))));
      if (raw !== "GETX") assert.ok((await s2.response())!.status >= 400);
      await s2.conn.closeWrite();
      s2.close();
    }
    assert.deepEqual((await once(port, get("/ok.txt"))).body, tree.ok);
    assert.ok(!server.log.some((l) => /worker \d+ (exited|died)|uncaught/i.test(l)), server.log.join("\n"));
  });
});

Deno.test("http: hundreds of mangled requests (bytes flipped, lines cut, escapes broken) are each answered or closed, and the worker never dies", async () => {
  await withServer([], async (port, tree, server) => {
    const workers = await childPids(server.pid);
    const base = encoder.encode(
      get(
        "/sub/%2e%2e/ok%20.txt?x=1",
        'Range: bytes=0-9\r\nIf-None-Match: "a"\r\nConnection: keep-alive\r\n',
      ),
    );
    const pieces = [...'\r\n\0%:/ -.,="\xff'].map((c) => c.charCodeAt(0));
    let seed = 12345;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (let i = 0; i < 300; i++) {
      const bytes = [...base];
      for (let k = 1 + random(6); k > 0; k--) {
        const at = 4 + random(bytes.length - 4); // the method stays, so that each is taken for HTTP
        const what = random(3);
        if (what === 0) bytes[at] = pieces[random(pieces.length)];
        else if (what === 1) bytes.splice(at, 0, pieces[random(pieces.length)]);
        else bytes.splice(at, 1 + random(8));
      }
      const s = await HttpSocket.open(port);
      try {
        await s.send(new Uint8Array(bytes));
        await s.conn.closeWrite();
        // Whatever comes back, the connection ends: answered, then closed at the client's end of input.
        for (
          let r = await s.response().catch(() => null);
          r !== null;
          r = await s.response().catch(() => null)
        ) {
          assert.ok(r.status >= 200 && r.status < 600);
          assert.ok(!decoder.decode(r.body).includes("secret"));
        }
      } finally {
        s.close();
      }
    }
    assert.deepEqual((await once(port, get("/ok.txt"))).body, tree.ok);
    assert.deepEqual(await childPids(server.pid), workers, "the same worker serves");
    assert.ok(!server.log.some((l) => /worker \d+ .*exited/.test(l)), server.log.join("\n"));
  });
});

Deno.test("http: with --no-http an HTTP request gets ferry's TOO_LARGE, and ferry's protocol is unchanged with HTTP on", async () => {
  await withServer(["--no-http"], async (port) => {
    const conn = await RawConnection.open(port);
    try {
      await conn.send(encoder.encode(get("/ok.txt")));
      const r = await conn.readResponse();
      assert.equal(r.json[0].code, "TOO_LARGE");
    } finally {
      conn.close();
    }
  });
  await withServer([], async (port, tree) => {
    const r = await runClient(["get", `127.0.0.1:${port}`, "ok.txt", "-o", "-", "-q"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout, tree.ok);
  });
});

Deno.test("http: with --tokens, HTTP (which cannot prove a token) is refused 403 for every path, existing or not, and ferry's ping still answers", async () => {
  await using dir = await tempDir();
  const tokens = `${dir.path}/tokens`;
  await Deno.writeTextFile(tokens, "alice 0123456789abcdef0123456789abcdef *\n", { mode: 0o600 });
  await Deno.chmod(tokens, 0o600);
  await withServer(["--tokens", tokens], async (port) => {
    const bodies = new Set<string>();
    for (const path of ["/ok.txt", "/missing.txt", "/sub/ok.txt"]) {
      const r = await once(port, get(path));
      assert.equal(r.status, 403, path);
      bodies.add(decoder.decode(r.body));
    }
    assert.equal(bodies.size, 1, `the same answer for every path: ${[...bodies].join(" | ")}`);
    const conn = await RawConnection.open(port);
    try {
      await conn.sendRequest({ op: "ping" });
      assert.equal((await conn.readResponse()).json[0].status, "ok");
    } finally {
      conn.close();
    }
  });
});

Deno.test("http: a client refused BUSY by the master gets 503 with Retry-After when its request starts like HTTP", async () => {
  if (!await have("curl", "503 when busy")) return;
  await withServer(
    ["--conns-per-worker", "1", "--queue", "0", "--idle-timeout", "120"],
    async (port, tree) => {
      // The one slot is taken by a transfer its client does not read.
      await sparseFile(tree.root, "hog.bin", 256 * 1024 * 1024);
      const hog = await RawConnection.open(port);
      try {
        await hog.sendRequest({ op: "get", path: "hog.bin" });
        assert.equal(String.fromCharCode((await hog.readFrame())!.payload[0]), "H");
        const r = await curl(["-D", "/dev/stderr", "-o", "/dev/null", `http://127.0.0.1:${port}/ok.txt`]);
        const { status, headers } = curlHeaders(r.stderr);
        assert.equal(status, 503);
        assert.equal(headers.get("retry-after"), "1");
        // A ferry client is still told BUSY in ferry's frames.
        const ferry = await runClient(["get", `127.0.0.1:${port}`, "ok.txt", "-o", "-", "--retries", "0"]);
        assert.equal(ferry.code, 4, ferry.stderr);
      } finally {
        hog.close();
      }
    },
  );
});
