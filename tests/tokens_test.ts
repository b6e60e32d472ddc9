/**
 * Tokens with scopes, with a real server and the real client: without a valid token every request but
 * `ping` is refused with the same UNAUTHORIZED bytes whether the path exists or not; a token reads only
 * inside its scopes, which match whole path segments; listings show only what the token may read; a wrong
 * secret and a replayed handshake are refused; a tokens file open to others or with a malformed line stops
 * the server with a line naming it; a reload takes a new file and keeps the old tokens when the new one is
 * broken; `mirror` with a scoped token mirrors only its scope.
 */

import assert from "node:assert/strict";
import { AUTH_NONCE_BYTES, decodeJson, encodeRequest, ErrorCode, PROTOCOL_VERSION } from "../framing.ts";
import { loadHashing } from "../hashing.ts";
import { authProof, fromHex, toHex } from "../tokens.ts";
import { ConnectionAccess, TokenStore } from "../worker/access.ts";
import {
  RawConnection,
  type RawFrame,
  runClient,
  runServerToExit,
  startServer,
  tempDir,
  type TestServer,
  treeOf,
} from "./helpers.ts";
import { FrameProxy } from "./proxy.ts";

await loadHashing();

const ALICE = { name: "alice", secret: "alice-secret-0123456789" };
const DEEP = { name: "deep", secret: "deep-secret-0123456789ab" };
const ROOT = { name: "root", secret: "root-secret-0123456789ab" };

const TOKENS = `# name  secret  scopes
${ALICE.name} ${ALICE.secret} docs/   # docs and below, not docs2

${DEEP.name}  ${DEEP.secret}  deep/a/b top.txt
${ROOT.name}  ${ROOT.secret}  *
`;

/** A served tree with folders on both sides of the scopes, a tokens file, and a client token file each. */
async function makeTree(dir: string): Promise<void> {
  const files: Record<string, string> = {
    "top.txt": "top",
    "docs/a.txt": "a",
    "docs/sub/b.txt": "b",
    "docs2/c.txt": "c",
    "secret/d.txt": "d",
    "deep/x.txt": "x",
    "deep/a/y.txt": "y",
    "deep/a/b/z.txt": "z",
    "deep/a/bb/w.txt": "w",
  };
  for (const [path, text] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/tree/${path}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(`${dir}/tree/${path}`, text);
  }
  await Deno.writeTextFile(`${dir}/tokens`, TOKENS, { mode: 0o600 });
  for (const t of [ALICE, DEEP, ROOT]) {
    await Deno.writeTextFile(`${dir}/${t.name}.token`, `${t.name} ${t.secret}\n`, { mode: 0o600 });
  }
  await Deno.writeTextFile(`${dir}/wrong.token`, `${ALICE.name} not-alice-secret-0123\n`, { mode: 0o600 });
}

async function withTokenServer(fn: (server: TestServer, dir: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir();
  await makeTree(dir.path);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    `${dir.path}/tree`,
    "--tokens",
    `${dir.path}/tokens`,
    "--workers",
    "2",
  ]);
  try {
    await fn(server, dir.path);
  } finally {
    await server.stop();
  }
}

/** The raw frames of one answer, up to and including its end frame. */
async function rawAnswer(conn: RawConnection): Promise<RawFrame[]> {
  const frames: RawFrame[] = [];
  for (;;) {
    const frame = await conn.readFrame();
    if (frame === null) throw new Error("the connection ended inside an answer");
    frames.push(frame);
    if (frame.length === 0) return frames;
  }
}

/** The JSON of a control frame. */
/**
 * A frame as the comparisons see it: its bytes, but a JSON frame without its `requestId`, which each answer
 * has its own of (the answers must be the same in everything else).
 */
function withoutRequestId(frame: RawFrame): unknown {
  if (frame.payload.length === 0 || frame.payload[0] !== 0x48 && frame.payload[0] !== 0x45) {
    return Array.from(frame.payload);
  }
  const { requestId: _, ...rest } = jsonOf(frame);
  return [frame.payload[0], rest];
}

const jsonOf = (frame: RawFrame) => decodeJson(frame.payload.subarray(1)) as Record<string, unknown>;

/** `hello` on `conn`: the nonce. */
async function hello(conn: RawConnection): Promise<Uint8Array> {
  await conn.sendRequest({ op: "hello" });
  const [head] = await rawAnswer(conn);
  const nonce = fromHex(String(jsonOf(head).nonce));
  assert.equal(nonce?.byteLength, AUTH_NONCE_BYTES);
  return nonce!;
}

/** Opens a connection that proves `token` (or `secret` instead of its own); returns it and auth's answer. */
async function authenticated(
  port: number,
  token: { name: string; secret: string },
): Promise<{ conn: RawConnection; answer: Record<string, unknown> }> {
  const conn = await RawConnection.open(port);
  const nonce = await hello(conn);
  const proof = toHex(authProof(new TextEncoder().encode(token.secret), nonce, token.name));
  await conn.sendRequest({ op: "auth", name: token.name, proof });
  return { conn, answer: jsonOf((await rawAnswer(conn))[0]) };
}

/** One request on a connection of its own without a token: the answer's raw frames; it must then close. */
async function anonymous(port: number, request: Record<string, unknown>): Promise<RawFrame[]> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest(request);
    const frames = await rawAnswer(conn);
    assert.ok(await conn.isClosedByPeer(), `UNAUTHORIZED closes the connection (${JSON.stringify(request)})`);
    return frames;
  } finally {
    conn.close();
  }
}

/** The paths of a listing's entries (one-Header form). */
async function listed(conn: RawConnection, path: string, recursive = true): Promise<string[] | string> {
  await conn.sendRequest({ op: "list", path, recursive });
  const [head] = await rawAnswer(conn);
  const body = jsonOf(head);
  if (head.payload[0] === 0x45) return String(body.code);
  return (body.entries as { path: string }[]).map((e) => e.path);
}

Deno.test("tokens: without a token every request but ping gets the same UNAUTHORIZED, existing path or not", async () => {
  await withTokenServer(async (server) => {
    const port = server.ports[0];
    const first = await anonymous(port, { op: "get", path: "docs/a.txt" });
    assert.equal(jsonOf(first[0]).code, ErrorCode.Unauthorized);
    const expected = first.map(withoutRequestId);
    for (
      const request of [
        { op: "get", path: "no/such/file" },
        { op: "stat", path: "docs/a.txt" },
        { op: "stat", path: "missing.txt" },
        { op: "list", path: "", recursive: true },
        { op: "list", path: "docs" },
        { op: "list", path: "not-a-folder" },
        { op: "sig", path: "top.txt" },
        { op: "sig", path: "nothing-here" },
        { op: "get", path: "docs/a.txt", ranges: [[0, 1]], ifMatch: "x" },
      ]
    ) {
      const frames = await anonymous(port, request);
      assert.deepEqual(frames.map(withoutRequestId), expected, JSON.stringify(request));
    }
    // ping answers, twice on one connection: it stays open.
    const pinger = await RawConnection.open(port);
    try {
      for (let i = 0; i < 2; i++) {
        await pinger.sendRequest({ op: "ping" });
        assert.equal(jsonOf((await rawAnswer(pinger))[0]).status, "ok");
      }
    } finally {
      pinger.close();
    }

    // The client: one line and exit 11.
    const client = await runClient(["get", `127.0.0.1:${port}`, "docs/a.txt", "-o", "-"]);
    assert.equal(client.code, 11, client.stderr);
    assert.match(client.stderr, /^ferry: server refused "docs\/a.txt": UNAUTHORIZED: .*\n$/);
  });
});

Deno.test("tokens: a token reads inside its scopes only, matched on whole path segments", async () => {
  await withTokenServer(async (server, dir) => {
    const port = server.ports[0];
    const { conn, answer } = await authenticated(port, ALICE);
    try {
      assert.equal(answer.name, ALICE.name);
      // Several requests on the one authenticated connection: one handshake, then requests as usual.
      for (const path of ["docs/a.txt", "docs/sub/b.txt", "./docs//a.txt"]) {
        await conn.sendRequest({ op: "stat", path });
        assert.equal(jsonOf((await rawAnswer(conn))[0]).status, "ok", path);
      }
      // docs2 shares the prefix "docs" but not the segment: refused, as is what does not exist.
      await conn.sendRequest({ op: "get", path: "docs2/c.txt" });
      const outside = await rawAnswer(conn);
      assert.equal(jsonOf(outside[0]).code, ErrorCode.Unauthorized);
      assert.match(String(jsonOf(outside[0]).message), /"alice" does not grant this path/);
    } finally {
      conn.close();
    }
    // Outside the scope, existing or not, the same bytes.
    const answers = [];
    for (const path of ["docs2/c.txt", "secret/missing", "top.txt"]) {
      const { conn } = await authenticated(port, ALICE);
      await conn.sendRequest({ op: "get", path });
      answers.push((await rawAnswer(conn)).map(withoutRequestId));
      assert.ok(await conn.isClosedByPeer());
      conn.close();
    }
    assert.deepEqual(answers[1], answers[0]);
    assert.deepEqual(answers[2], answers[0]);

    const token = `${dir}/${ALICE.name}.token`;
    const ok = await runClient([
      "get",
      `127.0.0.1:${port}`,
      "docs/sub/b.txt",
      "-o",
      "-",
      "--token-file",
      token,
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(new TextDecoder().decode(ok.stdout), "b");
    const refused = await runClient([
      "get",
      `127.0.0.1:${port}`,
      "docs2/c.txt",
      "-o",
      "-",
      "--token-file",
      token,
    ]);
    assert.equal(refused.code, 11, refused.stderr);
    assert.match(refused.stderr, /^ferry: server refused "docs2\/c.txt": UNAUTHORIZED: .*\n$/);
  });
});

Deno.test("tokens: a listing shows only what the token may read, and above a scope only the way down", async () => {
  await withTokenServer(async (server) => {
    const port = server.ports[0];
    const alice = (await authenticated(port, ALICE)).conn;
    const deep = (await authenticated(port, DEEP)).conn;
    const root = (await authenticated(port, ROOT)).conn;
    try {
      assert.deepEqual(await listed(alice, ""), ["docs/a.txt", "docs/sub/b.txt"]);
      assert.deepEqual(await listed(alice, "", false), [], "the root holds no file of the scope");
      assert.deepEqual(await listed(alice, "docs"), ["docs/a.txt", "docs/sub/b.txt"]);
      // A scope on a file (top.txt) and one three folders down, whose siblings stay hidden.
      assert.deepEqual(await listed(deep, ""), ["deep/a/b/z.txt", "top.txt"]);
      assert.deepEqual(await listed(deep, "deep"), ["deep/a/b/z.txt"]);
      assert.deepEqual(await listed(deep, "deep/a/b"), ["deep/a/b/z.txt"]);
      assert.equal(await listed(deep, "deep/a/bb"), ErrorCode.Unauthorized);
      // `*`: everything.
      assert.equal((await listed(root, "") as string[]).length, 9);
    } finally {
      for (const c of [alice, deep, root]) c.close();
    }
    for (const path of ["docs2", "secret", "no-such-folder"]) {
      const { conn } = await authenticated(port, ALICE);
      assert.equal(await listed(conn, path), ErrorCode.Unauthorized, path);
      conn.close();
    }
  });
});

Deno.test("tokens: a listing with inlined content carries only what the token may read", async () => {
  await withTokenServer(async (server) => {
    const { conn } = await authenticated(server.ports[0], DEEP);
    try {
      await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true, inline: 1000 });
      const frames = (await rawAnswer(conn)).filter((f) => f.length > 0);
      assert.deepEqual(frames.map((f) => String.fromCharCode(f.payload[0])).join(""), "HLDT");
      const entries = jsonOf(frames[1]).entries as { path: string; inline?: boolean }[];
      assert.deepEqual(entries.map((e) => [e.path, e.inline]), [["deep/a/b/z.txt", true], ["top.txt", true]]);
      assert.equal(new TextDecoder().decode(frames[2].payload.subarray(1)), "ztop");
    } finally {
      conn.close();
    }
  });
});

Deno.test("tokens: a wrong secret and an unknown name are refused alike, by the client with exit 11", async () => {
  await withTokenServer(async (server, dir) => {
    const port = server.ports[0];
    const wrong = await authenticated(port, { name: ALICE.name, secret: "not-alice-secret-0123" });
    const unknown = await authenticated(port, { name: "mallory", secret: ALICE.secret });
    assert.equal(wrong.answer.code, ErrorCode.Unauthorized);
    assert.deepEqual({ ...unknown.answer, requestId: 0 }, { ...wrong.answer, requestId: 0 });
    assert.equal(wrong.answer.message, "authentication failed");
    for (const { conn } of [wrong, unknown]) {
      assert.ok(await conn.isClosedByPeer());
      conn.close();
    }
    const client = await runClient([
      "get",
      `127.0.0.1:${port}`,
      "docs/a.txt",
      "-o",
      "-",
      "--token-file",
      `${dir}/wrong.token`,
    ]);
    assert.equal(client.code, 11, client.stderr);
    assert.match(
      client.stderr,
      /^ferry: server refused the token "alice": UNAUTHORIZED: authentication failed \[request [^\]]+\]\n$/,
    );
  });
});

Deno.test("tokens: a captured handshake replayed on another connection is refused", async () => {
  await withTokenServer(async (server, dir) => {
    const port = server.ports[0];
    const proxy = new FrameProxy(port);
    try {
      const client = await runClient([
        "get",
        proxy.address,
        "docs/a.txt",
        "-o",
        "-",
        "--token-file",
        `${dir}/${ALICE.name}.token`,
      ]);
      assert.equal(client.code, 0, client.stderr);
    } finally {
      await proxy.close();
    }
    const seen = proxy.connections[0].requests;
    assert.deepEqual(seen.map((r) => r.op), ["hello", "auth", "get"]);
    const captured = seen[1];
    assert.ok(!JSON.stringify(seen).includes(ALICE.secret), "the secret never crossed the wire");

    // On a new connection, after a hello (a fresh nonce), and without one: refused both ways.
    const replayed = await RawConnection.open(port);
    await hello(replayed);
    await replayed.send(encodeRequest({ ...captured, v: PROTOCOL_VERSION } as never));
    assert.equal(jsonOf((await rawAnswer(replayed))[0]).code, ErrorCode.Unauthorized);
    replayed.close();
    const blind = await RawConnection.open(port);
    await blind.send(encodeRequest({ ...captured, v: PROTOCOL_VERSION } as never));
    assert.equal(jsonOf((await rawAnswer(blind))[0]).code, ErrorCode.Unauthorized);
    blind.close();
    // A nonce counts once: a proof made for it, sent twice on its connection, is refused the second time.
    const twice = await RawConnection.open(port);
    const nonce = await hello(twice);
    const proof = toHex(authProof(new TextEncoder().encode(ALICE.secret), nonce, ALICE.name));
    await twice.sendRequest({ op: "auth", name: ALICE.name, proof });
    assert.equal(jsonOf((await rawAnswer(twice))[0]).name, ALICE.name);
    await twice.sendRequest({ op: "auth", name: ALICE.name, proof });
    assert.equal(jsonOf((await rawAnswer(twice))[0]).code, ErrorCode.Unauthorized);
    twice.close();
  });
});

Deno.test("tokens: mirror with a scoped token mirrors its scope only", async () => {
  await withTokenServer(async (server, dir) => {
    await Deno.mkdir(`${dir}/copy/secret`, { recursive: true });
    await Deno.writeTextFile(`${dir}/copy/secret/local.txt`, "mine");
    const env = { FERRY_TOKEN_FILE: `${dir}/${DEEP.name}.token` };
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "client.ts",
        "mirror",
        `127.0.0.1:${server.ports[0]}`,
        ".",
        `${dir}/copy`,
        "--delete",
      ],
      cwd: new URL("..", import.meta.url).pathname,
      env,
      stdin: "null",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const tree = await treeOf(`${dir}/copy`);
    assert.deepEqual(Object.keys(tree).filter((p) => !p.startsWith(".ferry/")).sort(), [
      "deep/a/b/z.txt",
      "top.txt",
    ]);
    // One handshake per connection, whatever the number of requests behind it.
    const byPeer = new Map<string, string[]>();
    for (const line of server.log) {
      const m = / peer=(\S+) .* request=(\S+)/.exec(line);
      if (m !== null) byPeer.set(m[1], [...byPeer.get(m[1]) ?? [], m[2]]);
    }
    assert.ok(byPeer.size > 0);
    for (const [peer, ops] of byPeer) {
      // (The lines of a worker's last turn may not be written yet: its first line, HELLO, came a turn before.)
      assert.equal(ops[0], "HELLO", peer);
      assert.equal(ops.filter((op) => op === "HELLO").length, 1, `${peer}: ${ops.join(" ")}`);
    }
    // Outside the scope entirely: refused, exit 11, nothing written.
    const refused = await runClient([
      "mirror",
      `127.0.0.1:${server.ports[0]}`,
      "secret",
      `${dir}/other`,
      "--token-file",
      `${dir}/${ALICE.name}.token`,
    ]);
    assert.equal(refused.code, 11, refused.stderr);
  });
});

Deno.test("tokens: a tokens file open to group or others, or with a malformed line, stops the server", async () => {
  await using dir = await tempDir();
  await makeTree(dir.path);
  const start = (tokens: string) =>
    runServerToExit(["--listen", "127.0.0.1:0", "--root", `${dir.path}/tree`, "--tokens", tokens]);
  await Deno.chmod(`${dir.path}/tokens`, 0o640);
  const open = await start(`${dir.path}/tokens`);
  assert.equal(open.code, 2);
  assert.equal(open.stderr.trim().split("\n").length, 1, open.stderr);
  assert.ok(open.stderr.includes(`${dir.path}/tokens is open to group or others (mode 0640)`), open.stderr);

  const malformed = `${dir.path}/malformed`;
  for (
    const [text, why] of [
      ["# ok\nalice alice-secret-0123456789 docs\n\nbob short docs\n", /line 4: the secret is shorter/],
      ["alice alice-secret-0123456789\n", /line 1: no scope after the secret/],
      ["alice alice-secret-0123456789 ../etc\n", /line 1: the scope "..\/etc" is not/],
      ["a a-secret-0123456789abc *\na a-secret-0123456789abc *\n", /line 2: the name "a" is given twice/],
      ["bad/name secret-0123456789abc *\n", /line 1: the name "bad\/name" is not/],
    ] as const
  ) {
    await Deno.writeTextFile(malformed, text, { mode: 0o600 });
    const result = await start(malformed);
    assert.equal(result.code, 2, result.stderr);
    assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
    assert.match(result.stderr, why);
    assert.ok(result.stderr.includes(malformed));
  }

  // Classic mode cannot ask for a token: a classic listener with --tokens is refused.
  await Deno.chmod(`${dir.path}/tokens`, 0o600);
  const classic = await runServerToExit([
    "--listen",
    "127.0.0.1:0",
    "--push",
    `${dir.path}/tree/top.txt`,
    "--tokens",
    `${dir.path}/tokens`,
  ]);
  assert.equal(classic.code, 2);
  assert.match(classic.stderr, /^ferry server: --tokens guards request mode; a classic-mode listener .*\n$/);

  // The client's token file: refused like ssh refuses an open private key, in one line, exit 2.
  await Deno.chmod(`${dir.path}/alice.token`, 0o644);
  const client = await runClient(["get", "127.0.0.1:1", "x", "--token-file", `${dir.path}/alice.token`]);
  assert.equal(client.code, 2, client.stderr);
  assert.match(
    client.stderr,
    /^ferry: --token-file: the token file .*alice\.token is open to group or others \(mode 0644\).*\n$/,
  );
});

Deno.test("tokens: reload() takes a new file, keeps the old tokens when the new one is broken, and revokes", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/tokens`;
  await Deno.writeTextFile(path, `${ALICE.name} ${ALICE.secret} docs\n`, { mode: 0o600 });
  const log: string[] = [];
  const store = new TokenStore(path, (line) => log.push(line));
  const prove = (access: ConnectionAccess, token: { name: string; secret: string }) =>
    access.authenticate(
      token.name,
      toHex(authProof(new TextEncoder().encode(token.secret), fromHex(access.hello())!, token.name)),
    );
  const alice = new ConnectionAccess(store);
  assert.equal(prove(alice, ALICE), ALICE.name);
  assert.equal(prove(new ConnectionAccess(store), ROOT), null, "not in the file yet");

  await Deno.writeTextFile(
    path,
    `${ALICE.name} ${ALICE.secret} docs secret\n${ROOT.name} ${ROOT.secret} *\n`,
  );
  assert.equal(store.reload(), true);
  assert.equal(prove(new ConnectionAccess(store), ROOT), ROOT.name);
  assert.equal(alice.reach("secret/d.txt"), "read", "a connection gets its token's new scopes");

  await Deno.writeTextFile(path, `${ALICE.name} ${ALICE.secret} docs\nbroken-line\n`);
  assert.equal(store.reload(), false);
  assert.match(log.at(-1)!, /reload refused, the 2 tokens in force stay: .*line 2: no secret/);
  assert.equal(prove(new ConnectionAccess(store), ROOT), ROOT.name, "the old tokens stay");
  await Deno.chmod(path, 0o644);
  assert.equal(store.reload(), false);
  assert.match(log.at(-1)!, /open to group or others/);

  // A token removed (or its secret changed) is refused on its connections from their next request on.
  await Deno.chmod(path, 0o600);
  await Deno.writeTextFile(path, `${ROOT.name} ${ROOT.secret} *\n`);
  assert.equal(store.reload(), true);
  assert.equal(alice.reach("docs/a.txt"), "none");
  assert.match(alice.refusal().message, /a valid token is needed/);
});

Deno.test("tokens: SIGHUP to the master makes every worker read the tokens file again", async () => {
  await withTokenServer(async (server, dir) => {
    const port = server.ports[0];
    const late = { name: "late", secret: "late-secret-0123456789ab" };
    const before = await authenticated(port, late);
    before.conn.close();
    assert.equal(before.answer.code, ErrorCode.Unauthorized, "not in the file yet");
    await Deno.writeTextFile(`${dir}/tokens`, `${late.name} ${late.secret} *\n`, { append: true });
    const from = server.log.length;
    server.kill("SIGHUP");
    await server.waitForLog(/master\[\d+\]: reloaded$/, from);
    assert.equal(server.log.slice(from).filter((l) => /reloaded: .*tokens: .* re-read/.test(l)).length, 2);
    const { conn, answer } = await authenticated(port, late);
    try {
      assert.equal(answer.name, late.name, "taken by the worker that answers");
      assert.deepEqual(await listed(conn, "docs"), ["docs/a.txt", "docs/sub/b.txt"]);
    } finally {
      conn.close();
    }
  });
});

Deno.test("tokens: a client with a token talks to a server without tokens as before", async () => {
  await using dir = await tempDir();
  await makeTree(dir.path);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    `${dir.path}/tree`,
    "--workers",
    "1",
  ]);
  try {
    const conn = await RawConnection.open(server.ports[0]);
    await conn.sendRequest({ op: "hello" });
    assert.equal(jsonOf((await rawAnswer(conn))[0]).nonce, undefined, "no tokens: no nonce");
    conn.close();
    const client = await runClient([
      "get",
      `127.0.0.1:${server.ports[0]}`,
      "secret/d.txt",
      "-o",
      "-",
      "--token-file",
      `${dir.path}/${ALICE.name}.token`,
    ]);
    assert.equal(client.code, 0, client.stderr);
    assert.equal(new TextDecoder().decode(client.stdout), "d");
  } finally {
    await server.stop();
  }
});
