/**
 * Signed releases against a real server and client: `sign` and `keygen`, then `get` and `mirror` with
 * `--trust-key`, which take a correctly signed tree (exit 0) and refuse with exit 7, one line and nothing
 * published: a forged file, a file the manifest does not list, a manifest signed by an unknown key or
 * altered, an older manifest than one seen (rollback), an expired one (freeze), and a server that claims
 * the signed hash for other bytes. minisign itself checks ferry's signatures, and ferry checks minisign's.
 */

import assert from "node:assert/strict";
import { jsonLines, withServer } from "./client_fixture.ts";
import { type ClientResult, makeFile, readRequest, runClient, sha256, tempDir, treeOf } from "./helpers.ts";
import { formatManifest, MANIFEST_NAME, type ManifestFile, SIGNATURE_NAME } from "../client/manifest.ts";
import { parseSecretKey, signData } from "../client/minisign.ts";
import {
  encodeErrorResponse,
  encodeJsonFrame,
  END_FRAME,
  ErrorCode,
  FrameType,
  putDataFrameHeader,
} from "../framing.ts";
import { loadHashing } from "../hashing.ts";

await loadHashing(); // minisign.ts signs with node:crypto, loaded by it

const MiB = 1024 * 1024;

/** Makes a key pair with `client keygen` in `dir`; returns the two files. */
async function keygen(dir: string, name: string): Promise<{ pub: string; sec: string }> {
  const keys = { pub: `${dir}/${name}.pub`, sec: `${dir}/${name}.sec` };
  const r = await runClient(["keygen", "-p", keys.pub, "-s", keys.sec]);
  assert.equal(r.code, 0, r.stderr);
  return keys;
}

/** Signs `dir` with `client sign`. */
async function sign(dir: string, sec: string, ...extra: string[]): Promise<void> {
  const r = await runClient(["sign", "-s", sec, ...extra, dir]);
  assert.equal(r.code, 0, r.stderr);
}

/** Asserts a refusal: exit 7 and exactly one line on stderr, matching `pattern`. */
function assertRefused(r: ClientResult, pattern: RegExp): void {
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, /^ferry: [^\n]+\n$/, "one line");
  assert.match(r.stderr, pattern);
}

/** Files below `dir` whose name says they are a part or a temporary file of ferry's. */
async function leftovers(dir: string): Promise<string[]> {
  return Object.keys(await treeOf(dir)).filter((p) => /\.ferry-.*\.(part|tmp)$/.test(p));
}

/** True if `tool` runs here; else prints why the test skips. */
async function have(tool: string, test: string): Promise<boolean> {
  try {
    await new Deno.Command(tool, { args: ["-v"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    console.log(`SKIPPED: ${test}: '${tool}' is not installed (Debian package ${tool})`);
    return false;
  }
}

Deno.test("a signed tree mirrors and gets with exit 0; LOCAL_DIR gets the verified manifest, and a second run transfers nothing", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    await Deno.mkdir(`${src}/site/sub`, { recursive: true });
    await Deno.writeTextFile(`${src}/site/a.txt`, "alpha\n");
    await Deno.writeTextFile(`${src}/site/sub/b.txt`, "beta\n");
    await sign(`${src}/site`, keys.sec, "--version", "3");
    const manifest = JSON.parse(await Deno.readTextFile(`${src}/site/${MANIFEST_NAME}`));
    assert.equal(manifest.version, 3);
    assert.deepEqual(Object.keys(manifest.files), ["a.txt", "sub/b.txt"]);
    assert.equal(manifest.files["a.txt"].sha256, sha256(new TextEncoder().encode("alpha\n")));

    let r = await runClient(["mirror", address, "site", `${out}/m`, "--trust-key", keys.pub, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await treeOf(`${out}/m`), await treeOf(`${src}/site`), "the manifest and signature too");
    const versions = JSON.parse(await Deno.readTextFile(`${out}/m/.ferry/manifest-versions.json`));
    assert.deepEqual(versions, { versions: { [`site/${MANIFEST_NAME}`]: 3 } });
    r = await runClient(["mirror", address, "site", `${out}/m`, "--trust-key", keys.pub, "--delete"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /mirror done: 0 updated, 2 unchanged, 0 deleted, 0 failed/);

    // get finds the manifest in the folder above the file's.
    r = await runClient([
      "get",
      address,
      "site/sub/b.txt",
      "-o",
      `${out}/b.txt`,
      "--trust-key",
      keys.pub,
      "--state-dir",
      `${out}/state`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await Deno.readTextFile(`${out}/b.txt`), "beta\n");
  });
});

Deno.test("a large file changed in a signed release comes by delta, checked against the new manifest", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    await Deno.mkdir(`${src}/site`);
    await makeFile(`${src}/site`, "big.bin", 3 * MiB);
    await sign(`${src}/site`, keys.sec, "--version", "4");
    assert.equal((await runClient(["mirror", address, "site", `${out}/m`, "--trust-key", keys.pub])).code, 0);
    const big = await Deno.open(`${src}/site/big.bin`, { write: true });
    await big.write(new TextEncoder().encode("a patch at the start"));
    big.close();
    await sign(`${src}/site`, keys.sec, "--version", "5");
    const r = await runClient(["mirror", address, "site", `${out}/m`, "--trust-key", keys.pub, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const line = jsonLines(r).find((l) => l.path === "site/big.bin")!;
    assert.equal(line.status, "updated");
    assert.ok((line.reused as number) > 2 * MiB, `reused ${line.reused}`);
    assert.deepEqual(await treeOf(`${out}/m`), await treeOf(`${src}/site`));
  });
});

Deno.test("a file replaced on the server after signing is refused with exit 7: get and mirror publish nothing and the old copy stays", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    await Deno.writeTextFile(`${src}/app.bin`, "good build 1\n");
    await Deno.writeTextFile(`${src}/other.txt`, "untouched\n");
    await sign(src, keys.sec, "--version", "1");
    const trust = ["--trust-key", keys.pub, "--state-dir", `${out}/state`];
    assert.equal((await runClient(["get", address, "app.bin", "-o", `${out}/app.bin`, ...trust])).code, 0);
    assert.equal((await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub])).code, 0);

    // Release 2 is signed; then its file is replaced on the server by one of the same size, whose SHA-256
    // (the server's own) looks as valid as any.
    await Deno.writeTextFile(`${src}/app.bin`, "good build 2\n");
    await sign(src, keys.sec, "--version", "2");
    await Deno.writeTextFile(`${src}/app.bin`, "evil build 2\n");
    let r = await runClient(["get", address, "app.bin", "-o", `${out}/app.bin`, ...trust]);
    assertRefused(
      r,
      /"app\.bin" has SHA-256 [0-9a-f]{64}, the signed manifest says [0-9a-f]{64}: not published/,
    );
    assert.equal(await Deno.readTextFile(`${out}/app.bin`), "good build 1\n");
    r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub, "--delete"]);
    assertRefused(r, /1 \("app\.bin"\) of another size or SHA-256; nothing was fetched or deleted/);
    assert.equal(await Deno.readTextFile(`${out}/m/app.bin`), "good build 1\n");
    // A host that never had the file gets nothing either.
    r = await runClient(["get", address, "app.bin", "-o", `${out}/fresh.bin`, ...trust]);
    assertRefused(r, /the signed manifest says/);
    await assert.rejects(Deno.stat(`${out}/fresh.bin`), Deno.errors.NotFound);
    assert.deepEqual(await leftovers(out), []);
  });
});

Deno.test("a server that sends other bytes under the signed SHA-256 is caught on the bytes written: exit 7, nothing published", async () => {
  await using dir = await tempDir();
  const keys = await keygen(dir.path, "release");
  const good = new TextEncoder().encode("good build\n");
  const evil = new TextEncoder().encode("evil build\n");
  const key = parseSecretKey(await Deno.readTextFile(keys.sec), keys.sec);
  const manifest = new TextEncoder().encode(formatManifest({
    version: 1,
    created: new Date().toISOString(),
    expires: new Date(Date.now() + 3600_000),
    files: new Map([["app.bin", { size: good.length, sha256: sha256(good) }]]),
  }));
  const signature = new TextEncoder().encode(signData(manifest, key, "test"));
  // A peer that serves the real manifest and signature, then evil bytes announced with the good hash (and
  // a listing with the good hash, for mirror).
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: string[] = [];
  const answer = async (conn: Deno.Conn) => {
    for (;;) {
      const request = await readRequest(conn).catch(() => null);
      if (request === null) return;
      const path = String(request.path);
      served.push(`${request.op} ${path}`);
      if (request.op === "list") {
        const entry = {
          path: "app.bin",
          size: good.length,
          mtimeNs: "1",
          mode: 420,
          etag: "e1",
          sha256: sha256(good),
        };
        await conn.write(encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", entries: [entry] }, 4));
        continue;
      }
      const body = path === MANIFEST_NAME
        ? manifest
        : path === SIGNATURE_NAME
        ? signature
        : path === "app.bin"
        ? evil
        : null;
      if (body === null) {
        await conn.write(encodeErrorResponse({ code: ErrorCode.NotFound, message: "no such file" }));
        continue;
      }
      const sha = body === evil ? sha256(good) : sha256(body);
      const header = encodeJsonFrame(FrameType.Header, {
        v: 1,
        status: "ok",
        size: body.length,
        sha256: sha,
        etag: "e1",
      });
      const data = new Uint8Array(5 + body.length);
      putDataFrameHeader(data, body.length);
      data.set(body, 5);
      for (const frame of [header, data, END_FRAME]) await conn.write(frame);
    }
  };
  const serveOne = async () => {
    using conn = await listener.accept();
    await answer(conn);
  };
  const address = `127.0.0.1:${listener.addr.port}`;
  const trust = ["--trust-key", keys.pub, "--retries", "0"];
  await Deno.writeTextFile(`${dir.path}/app.bin`, "old build\n");
  let [r] = await Promise.all([
    runClient([
      "get",
      address,
      "app.bin",
      "-o",
      `${dir.path}/app.bin`,
      ...trust,
      "--state-dir",
      `${dir.path}/state`,
    ]),
    serveOne(),
  ]);
  assert.deepEqual(served.splice(0), [`get ${MANIFEST_NAME}`, `get ${SIGNATURE_NAME}`, "get app.bin"]);
  const refusal =
    /SHA-256 mismatch for "app\.bin": received [0-9a-f]{64}, the signed manifest has [0-9a-f]{64}: not published/;
  assertRefused(r, refusal);
  assert.ok(r.stderr.includes(sha256(evil)) && r.stderr.includes(sha256(good)));
  assert.equal(await Deno.readTextFile(`${dir.path}/app.bin`), "old build\n");

  // mirror: the listing agrees with the manifest; the bytes do not.
  await Deno.mkdir(`${dir.path}/m`);
  await Deno.writeTextFile(`${dir.path}/m/app.bin`, "old build\n");
  [r] = await Promise.all([runClient(["mirror", address, ".", `${dir.path}/m`, ...trust]), serveOne()]);
  // Bytes unlike the hash the server announced may have been damaged on the way: tried again, the same.
  assert.deepEqual(served.slice(0, 3), [`get ${MANIFEST_NAME}`, `get ${SIGNATURE_NAME}`, "list "]);
  assert.ok(served.length > 3 && served.slice(3).every((s) => s === "get app.bin"), served.join(", "));
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, new RegExp(`^ferry: app\\.bin: ${refusal.source}`));
  assert.match(r.stderr, /mirror done: 0 updated, 0 unchanged, 0 deleted, 1 failed\n$/);
  assert.equal(await Deno.readTextFile(`${dir.path}/m/app.bin`), "old build\n");
  assert.deepEqual(await leftovers(dir.path), []);
});

Deno.test("a file the manifest does not list is refused: get exits 7, mirror fetches nothing", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    await Deno.writeTextFile(`${src}/listed.txt`, "signed\n");
    await sign(src, keys.sec);
    await Deno.writeTextFile(`${src}/planted.sh`, "rm -rf /\n");
    let r = await runClient([
      "get",
      address,
      "planted.sh",
      "-o",
      `${out}/planted.sh`,
      "--trust-key",
      keys.pub,
      "--state-dir",
      `${out}/state`,
    ]);
    assertRefused(
      r,
      /^ferry: "planted\.sh" is not in the signed manifest ".ferry-manifest\.json" \(version \d+\)\n$/,
    );
    r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub]);
    assertRefused(r, /1 \("planted\.sh"\) not in it; nothing was fetched or deleted/);
    // Only the version of the (valid) manifest was recorded, in the mirror's own state folder.
    assert.deepEqual(await treeOf(`${out}/m`), {});
  });
});

Deno.test("a manifest signed by an unknown key or altered is refused, and mirror --delete deletes nothing; a second --trust-key (rotation) accepts the new key", async () => {
  await withServer(async ({ src, out, address }) => {
    const old = await keygen(out, "old");
    const rogue = await keygen(out, "rogue");
    await Deno.writeTextFile(`${src}/a.txt`, "a\n");
    await Deno.writeTextFile(`${src}/b.txt`, "b\n");
    await sign(src, old.sec);
    assert.equal((await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", old.pub])).code, 0);
    await Deno.writeTextFile(`${out}/m/local-only.txt`, "not on the server\n");

    // The server drops b.txt and re-signs with a key of its own.
    await Deno.remove(`${src}/b.txt`);
    await sign(src, rogue.sec);
    let r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", old.pub, "--delete"]);
    const rogueId = (await Deno.readTextFile(rogue.pub)).match(/public key ([0-9A-F]{16})/)![1];
    assertRefused(r, new RegExp(`made by key ${rogueId}, which is not a trusted key`));
    assert.equal(await Deno.readTextFile(`${out}/m/b.txt`), "b\n");
    assert.equal(await Deno.readTextFile(`${out}/m/local-only.txt`), "not on the server\n");

    // An altered manifest (a hash changed by hand) under the old key's signature.
    await sign(src, old.sec);
    const text = await Deno.readTextFile(`${src}/${MANIFEST_NAME}`);
    await Deno.writeTextFile(`${src}/${MANIFEST_NAME}`, text.replace(/"sha256":"[0-9a-f]/, '"sha256":"0'));
    r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", old.pub, "--delete"]);
    assertRefused(r, /the signature does not verify with key [0-9A-F]{16} \(the signed file was altered\)/);
    assert.equal(await Deno.readTextFile(`${out}/m/b.txt`), "b\n");

    // Rotation: the publisher moves to a new key; clients trust both for a while.
    const next = await keygen(out, "next");
    await sign(src, next.sec);
    r = await runClient([
      "mirror",
      address,
      ".",
      `${out}/m`,
      "--trust-key",
      old.pub,
      "--trust-key",
      next.pub,
      "--delete",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(Object.keys(await treeOf(`${out}/m`)).sort(), [MANIFEST_NAME, SIGNATURE_NAME, "a.txt"]);
  });
});

Deno.test("an older manifest after a newer one was seen is a rollback: get and mirror exit 7 and keep the newer files", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    const trustGet = ["--trust-key", keys.pub, "--state-dir", `${out}/state`];
    await Deno.writeTextFile(`${src}/app.txt`, "release 1\n");
    await sign(src, keys.sec, "--version", "1");
    const oldManifest = await Deno.readFile(`${src}/${MANIFEST_NAME}`);
    const oldSignature = await Deno.readFile(`${src}/${SIGNATURE_NAME}`);
    await Deno.writeTextFile(`${src}/app.txt`, "release 2\n");
    await sign(src, keys.sec, "--version", "2");
    assert.equal((await runClient(["get", address, "app.txt", "-o", `${out}/app.txt`, ...trustGet])).code, 0);
    assert.equal((await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub])).code, 0);

    // The server replays release 1, validly signed and not expired.
    await Deno.writeTextFile(`${src}/app.txt`, "release 1\n");
    await Deno.writeFile(`${src}/${MANIFEST_NAME}`, oldManifest);
    await Deno.writeFile(`${src}/${SIGNATURE_NAME}`, oldSignature);
    let r = await runClient(["get", address, "app.txt", "-o", `${out}/app.txt`, ...trustGet]);
    assertRefused(
      r,
      /\(version 1\) is older than version 2, the highest seen \(kept in .*manifest-versions\.json\): refusing a rollback/,
    );
    r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub, "--delete"]);
    assertRefused(r, /\(version 1\) is older than version 2/);
    assert.equal(await Deno.readTextFile(`${out}/app.txt`), "release 2\n");
    assert.equal(await Deno.readTextFile(`${out}/m/app.txt`), "release 2\n");
  });
});

Deno.test("an expired manifest is refused (freeze): exit 7, nothing fetched", async () => {
  await withServer(async ({ src, out, address }) => {
    const keys = await keygen(out, "release");
    const body = new TextEncoder().encode("stale\n");
    await Deno.writeFile(`${src}/app.txt`, body);
    const files = new Map<string, ManifestFile>([["app.txt", { size: body.length, sha256: sha256(body) }]]);
    const manifest = new TextEncoder().encode(formatManifest({
      version: 7,
      created: "2026-01-01T00:00:00.000Z",
      expires: new Date(Date.now() - 1000),
      files,
    }));
    await Deno.writeFile(`${src}/${MANIFEST_NAME}`, manifest);
    const key = parseSecretKey(await Deno.readTextFile(keys.sec), keys.sec);
    await Deno.writeTextFile(`${src}/${SIGNATURE_NAME}`, signData(manifest, key, "expired"));
    let r = await runClient([
      "get",
      address,
      "app.txt",
      "-o",
      `${out}/app.txt`,
      "--trust-key",
      keys.pub,
      "--state-dir",
      `${out}/state`,
    ]);
    assertRefused(r, /\(version 7\) expired at \S+Z: the server may be replaying an old release/);
    r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub]);
    assertRefused(r, /expired at/);
    assert.deepEqual([...Deno.readDirSync(out)].map((e) => e.name).sort(), ["release.pub", "release.sec"]);
  });
});

Deno.test("minisign verifies ferry's signed manifest, and ferry takes a manifest minisign signed with a key of minisign -G -W (prehashed and legacy)", async () => {
  if (!await have("minisign", "minisign interoperability")) return;
  await withServer(async ({ src, out, address }) => {
    // ferry signs, minisign checks.
    const keys = await keygen(out, "ferry");
    await Deno.writeTextFile(`${src}/app.txt`, "built\n");
    await sign(src, keys.sec);
    const checked = await new Deno.Command("minisign", {
      args: ["-V", "-p", keys.pub, "-m", `${src}/${MANIFEST_NAME}`],
      stdin: "null",
    }).output();
    const said = new TextDecoder().decode(checked.stdout);
    assert.equal(checked.code, 0, new TextDecoder().decode(checked.stderr));
    assert.match(
      said,
      /Signature and comment signature verified\nTrusted comment: timestamp:\d+\tfile:\.ferry-manifest\.json/,
    );

    // minisign makes the keys and signs the manifest ferry wrote; ferry checks it, then its legacy form.
    const mini = { pub: `${out}/mini.pub`, sec: `${out}/mini.sec` };
    const made = await new Deno.Command("minisign", {
      args: ["-G", "-W", "-p", mini.pub, "-s", mini.sec],
      stdin: "null",
      stdout: "null",
    }).output();
    assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
    for (const legacy of [[], ["-l"]]) {
      const signed = await new Deno.Command("minisign", {
        args: ["-S", ...legacy, "-s", mini.sec, "-m", `${src}/${MANIFEST_NAME}`, "-t", "by minisign"],
        stdin: "null",
        stdout: "null",
      }).output();
      assert.equal(signed.code, 0, new TextDecoder().decode(signed.stderr));
      const prefix = (await Deno.readTextFile(`${src}/${SIGNATURE_NAME}`)).split("\n")[1].slice(0, 2);
      assert.equal(prefix, legacy.length === 0 ? "RU" : "RW", "ED (prehashed) or Ed (legacy)");
      const r = await runClient([
        "get",
        address,
        "app.txt",
        "-o",
        `${out}/app${legacy.length}.txt`,
        "--trust-key",
        mini.pub,
        "--state-dir",
        `${out}/state`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await Deno.readTextFile(`${out}/app${legacy.length}.txt`), "built\n");
    }
    // minisign also signs with ferry's own secret key, which it reads as one of its own unencrypted ones.
    const own = await new Deno.Command("minisign", {
      args: ["-S", "-s", keys.sec, "-m", `${src}/${MANIFEST_NAME}`],
      stdin: "null",
      stdout: "null",
    }).output();
    assert.equal(own.code, 0, new TextDecoder().decode(own.stderr));
    const r = await runClient(["mirror", address, ".", `${out}/m`, "--trust-key", keys.pub]);
    assert.equal(r.code, 0, r.stderr);
  });
});

Deno.test("sign refuses a password-protected key and a version not above the one already signed, with one line and exit 2", async () => {
  await using dir = await tempDir();
  const keys = await keygen(dir.path, "k");
  const lines = (await Deno.readTextFile(keys.sec)).split("\n");
  const bytes = Uint8Array.from(atob(lines[1]), (c) => c.charCodeAt(0));
  bytes.set([0x53, 0x63], 2); // "Sc": scrypt, as minisign -G without -W writes it
  await Deno.writeTextFile(`${dir.path}/enc.sec`, `${lines[0]}\n${btoa(String.fromCharCode(...bytes))}\n`);
  await Deno.mkdir(`${dir.path}/tree`);
  let r = await runClient(["sign", "-s", `${dir.path}/enc.sec`, `${dir.path}/tree`]);
  assert.equal(r.code, 2);
  assert.match(
    r.stderr,
    /^ferry: \S+enc\.sec is protected by a password, which ferry does not read: remove it with 'minisign -C -W/,
  );
  await sign(`${dir.path}/tree`, keys.sec, "--version", "9");
  r = await runClient(["sign", "-s", keys.sec, "--version", "9", `${dir.path}/tree`]);
  assert.equal(r.code, 2);
  assert.match(
    r.stderr,
    /^ferry: --version 9 is not above 9, the version of the manifest already in \S+: clients that saw it would refuse the new one as a rollback\n$/,
  );
});
