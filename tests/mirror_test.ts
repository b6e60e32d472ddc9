/**
 * `client mirror` against a real server: a nested tree copied over one connection, then kept in step
 * (added, changed, deleted files with --delete), nothing transferred when nothing changed, an interrupted
 * mirror resumed, and failures of single files counted without stopping the others.
 */

import assert from "node:assert/strict";
import { localRelative, normalizeRemoteDir } from "../client/mirror.ts";
import { partName, partStem } from "../client/publish.ts";
import { LocalTree } from "../client/local_tree.ts";
import { deleteExtraneous } from "../client/mirror_delete.ts";
import { jsonLines, listDir, spawnClient, withServer } from "./client_fixture.ts";
import { type ClientResult, eventually, makeFile, runClient, tempDir, treeOf } from "./helpers.ts";
import { FrameProxy } from "./proxy.ts";

const MiB = 1024 * 1024;

// libc binds each symbol on first use and keeps it, which the test sanitizer counts as a leak: what
// deleteExtraneous calls is bound here, before the tests.
{
  const dir = Deno.makeTempDirSync();
  Deno.writeTextFileSync(`${dir}/x`, "x");
  Deno.writeTextFileSync(`${dir}/${partName("y", "tag")}`, "y");
  using tree = LocalTree.open(dir);
  await deleteExtraneous("", tree, new Set(), () => {});
  Deno.removeSync(dir, { recursive: true });
}

/** Directories below `root`, sorted. */
async function dirs(root: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
    const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
    if (entry.isDirectory && path !== ".ferry") out.push(path, ...await dirs(root, path));
  }
  return out.sort();
}

/** `{path: status}` of a run's --json lines. */
function statuses(r: ClientResult): Record<string, unknown> {
  return Object.fromEntries(jsonLines(r).map((l) => [l.path, l.status]));
}

/** Total data frames the proxy forwarded. */
function dataFrames(proxy: FrameProxy): number {
  return proxy.connections.reduce((n, c) => n + c.dataFrames, 0);
}

Deno.test("mirror copies a nested tree over one connection, then brings in added and changed files, --delete removes the gone ones, and a third run transfers nothing", async () => {
  await withServer(async ({ src, out, server }) => {
    const remote = `${src}/site`;
    await Deno.mkdir(`${remote}/a/b/c`, { recursive: true });
    await Deno.mkdir(`${remote}/sub`, { recursive: true });
    await Deno.mkdir(`${src}/elsewhere`);
    await makeFile(`${remote}/a/b/c`, "deep.bin", 2 * MiB + 3);
    await Deno.writeTextFile(`${remote}/top.txt`, "version 1\n");
    await Deno.writeTextFile(`${remote}/a/mid.txt`, "middle\n");
    await Deno.writeTextFile(`${remote}/gone.txt`, "soon removed\n");
    await Deno.writeTextFile(`${remote}/sub/only.txt`, "its folder goes too\n");
    await Deno.writeTextFile(`${src}/elsewhere/outside.txt`, "not below REMOTE_DIR\n");
    const local = `${out}/mirror`;
    // 1. A fresh copy; LOCAL_DIR is created.
    let proxy = new FrameProxy(server.ports[0]);
    try {
      const r = await runClient(["mirror", proxy.address, "site", local, "--json"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(statuses(r), {
        "site/a/b/c/deep.bin": "updated",
        "site/a/mid.txt": "updated",
        "site/gone.txt": "updated",
        "site/sub/only.txt": "updated",
        "site/top.txt": "updated",
      });
      // One persistent connection for the listing and every file; a second one for the signature of the one
      // large file, kept for its first delta.
      assert.equal(proxy.connections.length, 2);
      // Into an empty LOCAL_DIR, the listing brings the small files with it: only deep.bin is asked for.
      assert.deepEqual(proxy.connections[0].requests.map((q) => [q.op, q.path]), [
        ["list", "site"],
        ["get", "site/a/b/c/deep.bin"],
      ]);
      assert.deepEqual(proxy.connections[1].requests.map((q) => [q.op, q.path]), [[
        "sig",
        "site/a/b/c/deep.bin",
      ]]);
      // The client says it is done only after the last answer: every answer's frames went through first.
      const seen = proxy.connections[0];
      assert.equal(seen.endFrameAfterControls, seen.controls.length);
    } finally {
      await proxy.close();
    }
    assert.deepEqual(await treeOf(local), await treeOf(remote));

    // 2. On the server: one file added (in a new folder), one changed (renamed over), two removed with a
    //    folder. Locally: a file and a folder the server never had.
    await Deno.mkdir(`${remote}/new`);
    await Deno.writeTextFile(`${remote}/new/n.txt`, "new\n");
    await Deno.writeTextFile(`${src}/top.next`, "version 2, longer\n");
    await Deno.rename(`${src}/top.next`, `${remote}/top.txt`);
    await Deno.remove(`${remote}/gone.txt`);
    await Deno.remove(`${remote}/sub`, { recursive: true });
    await Deno.writeTextFile(`${local}/local-only.txt`, "mine\n");
    await Deno.mkdir(`${local}/emptied/deeper`, { recursive: true });
    await Deno.writeTextFile(`${local}/emptied/deeper/x.txt`, "mine too\n");
    proxy = new FrameProxy(server.ports[0]);
    try {
      const r = await runClient(["mirror", proxy.address, "site/", local, "--delete", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(statuses(r), {
        "site/a/b/c/deep.bin": "unchanged",
        "site/a/mid.txt": "unchanged",
        "site/new/n.txt": "updated",
        "site/top.txt": "updated",
        "site/gone.txt": "deleted",
        "site/sub/only.txt": "deleted",
        "site/local-only.txt": "deleted",
        "site/emptied/deeper/x.txt": "deleted",
      });
      assert.equal(proxy.connections.length, 1);
      // Changed since the first run's listing, the two come with this one: its one Data frame, and no `get`.
      assert.deepEqual(proxy.connections[0].requests.map((q) => q.op), ["list"]);
      assert.equal(dataFrames(proxy), 1, "only the two new or changed files were sent");
      assert.match(r.stderr, /^ferry: mirror done: 2 updated, 2 unchanged, 4 deleted, 0 failed\n$/);
    } finally {
      await proxy.close();
    }
    assert.deepEqual(await treeOf(local), await treeOf(remote));
    assert.deepEqual(await dirs(local), ["a", "a/b", "a/b/c", "new"], "emptied folders are removed");

    // 3. Nothing changed: nothing is transferred.
    proxy = new FrameProxy(server.ports[0]);
    try {
      const r = await runClient(["mirror", proxy.address, "site", local, "--delete"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, "ferry: mirror done: 0 updated, 4 unchanged, 0 deleted, 0 failed\n");
      assert.equal(dataFrames(proxy), 0);
    } finally {
      await proxy.close();
    }
    assert.deepEqual(await treeOf(local), await treeOf(remote));
  });
});

Deno.test("an interrupted mirror is resumed by the next run, and --delete keeps the part of a listed file", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await makeFile(src, "big.bin", 40 * MiB);
    await Deno.writeTextFile(`${src}/a.txt`, "first in the listing\n");
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 8 * MiB } });
    let partBytes = 0;
    try {
      const client = spawnClient(["mirror", proxy.address, ".", out]);
      await proxy.held;
      await eventually("the part holds what was forwarded", async () => {
        for await (const entry of Deno.readDir(out)) {
          if (entry.name.startsWith(".big.bin.ferry-")) {
            partBytes = (await Deno.stat(`${out}/${entry.name}`)).size;
            return partBytes === proxy.connections[0].dataBytes - 21; // a.txt's 21 bytes came first
          }
        }
        return false;
      });
      // The file before the held one is published while the held one is still arriving.
      await eventually(
        "a.txt published",
        async () => await Deno.lstat(`${out}/a.txt`).then(() => true, () => false),
      );
      client.process.kill("SIGKILL");
      await client.done;
    } finally {
      await proxy.close();
    }
    const r = await runClient(["mirror", address, ".", out, "--delete", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const reports = Object.fromEntries(jsonLines(r).map((l) => [l.path, l]));
    assert.equal(reports["a.txt"].status, "unchanged");
    assert.equal(reports["big.bin"].status, "updated");
    assert.equal(reports["big.bin"].resumedFrom, partBytes);
    assert.equal(reports["big.bin"].bytes, 40 * MiB - partBytes);
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

/** Paths of the published files below `root` (parts and `.ferry` left out), sorted. */
async function publishedFiles(root: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
    const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
    if (entry.name.startsWith(".")) continue;
    if (entry.isDirectory) out.push(...await publishedFiles(root, path));
    else out.push(path);
  }
  return out.sort();
}

Deno.test("a mirror of 5,000 files killed half-way, run again, fetches none of the files it had published", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const files = 5000, size = 1024;
    const contents = new Map<string, string>();
    for (let d = 0; d < 50; d++) {
      Deno.mkdirSync(`${src}/d${d}`);
      for (let f = 0; f < files / 50; f++) {
        const path = `d${d}/f${f}.txt`;
        contents.set(path, `${path} `.padEnd(size, "x"));
        Deno.writeTextFileSync(`${src}/${path}`, contents.get(path)!);
      }
    }
    // Held after 3 MiB of the 5 MiB: the first batch of parts is published by then, the rest is not.
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 3 * MiB } });
    let published: string[] = [];
    try {
      const client = spawnClient(["mirror", proxy.address, ".", out]);
      await proxy.held;
      await eventually("a batch published", async () => (await publishedFiles(out)).length > 0);
      client.process.kill("SIGKILL");
      await client.done;
      published = await publishedFiles(out);
    } finally {
      await proxy.close();
    }
    assert.ok(published.length > 0 && published.length < files, `${published.length} published`);

    const r = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const lines = new Map(jsonLines(r).map((l) => [l.path, l]));
    for (const path of published) {
      assert.equal(lines.get(path)?.status, "unchanged", path);
      assert.equal(lines.get(path)?.bytes, 0, path);
    }
    const updated = [...lines.values()].filter((l) => l.status === "updated").length;
    assert.equal(updated, files - published.length);
    assert.deepEqual(await publishedFiles(out), [...contents.keys()].sort());
    for (const [path, text] of contents) assert.equal(Deno.readTextFileSync(`${out}/${path}`), text, path);
  });
});

Deno.test("a small file's part is removed before the fetch, but not one that another run holds locked", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/left.txt`, "the server's left\n");
    await Deno.writeTextFile(`${src}/held.txt`, "the server's held\n");
    const left = `${out}/.left.txt.ferry-0123456789abcdef0123456789abcdef.part`;
    const held = `${out}/.held.txt.ferry-0123456789abcdef0123456789abcdef.part`;
    await Deno.writeTextFile(left, "the ser");
    await Deno.writeTextFile(held, "the ser");
    using lock = await Deno.open(held, { read: true, write: true });
    await lock.lock(true); // as another run writing it would

    const r = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(statuses(r), { "left.txt": "updated", "held.txt": "updated" });
    assert.equal(await Deno.readTextFile(`${out}/left.txt`), "the server's left\n");
    assert.equal(await Deno.readTextFile(`${out}/held.txt`), "the server's held\n");
    await assert.rejects(Deno.lstat(left), Deno.errors.NotFound);
    assert.equal(await Deno.readTextFile(held), "the ser", "the held part is the other run's");
  });
});

Deno.test("mirror counts a file it cannot publish as failed, goes on with the others, and exits with that failure's code", async () => {
  await withServer(async ({ src, out, address }) => {
    for (const name of ["1.txt", "2.txt", "3.txt"]) await Deno.writeTextFile(`${src}/${name}`, `${name}\n`);
    await Deno.mkdir(`${out}/2.txt`); // a local folder where the server has a file
    await Deno.writeTextFile(`${out}/2.txt/keep`, "not replaced by a file\n");
    const r = await runClient(["mirror", address, "", out, "--json"]);
    assert.equal(r.code, 8, r.stderr);
    assert.deepEqual(statuses(r), { "1.txt": "updated", "2.txt": "failed", "3.txt": "updated" });
    assert.match(
      r.stderr,
      /^ferry: 2\.txt: \S+\/2\.txt is a folder where the server has a file: left as it is \(--delete replaces it\)\n/m,
    );
    assert.match(r.stderr, /mirror done: 2 updated, 0 unchanged, 0 deleted, 1 failed\n$/);
    assert.equal(await Deno.readTextFile(`${out}/2.txt/keep`), "not replaced by a file\n");
    assert.deepEqual(Object.keys(await treeOf(out)).sort(), ["1.txt", "2.txt/keep", "3.txt"]);
  });
});

Deno.test("mirror --delete replaces a folder where the server now has a file in one run, unless the folder holds a symlink", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/a/deep/er`, { recursive: true });
    await Deno.writeTextFile(`${src}/a/one.txt`, "one\n");
    await Deno.writeTextFile(`${src}/a/deep/er/two.txt`, "two\n");
    await Deno.mkdir(`${src}/b`);
    await Deno.writeTextFile(`${src}/b/three.txt`, "three\n");
    await Deno.writeTextFile(`${src}/c.txt`, "c\n");
    const local = `${out}/copy`;
    assert.equal((await runClient(["mirror", address, "", local, "--delete", "-q"])).code, 0);
    await Deno.symlink(`${local}/c.txt`, `${local}/b/link`); // --delete never removes a symlink
    // The server's folders a and b become files.
    await Deno.remove(`${src}/a`, { recursive: true });
    await Deno.remove(`${src}/b`, { recursive: true });
    await makeFile(src, "a", 3 * MiB); // large enough for a delta, had there been a file to patch
    await Deno.writeTextFile(`${src}/b`, "b is a file now\n");

    const r = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.equal(r.code, 8, r.stderr);
    assert.deepEqual(statuses(r), {
      "a/one.txt": "deleted",
      "a/deep/er/two.txt": "deleted",
      "b/three.txt": "deleted",
      a: "updated",
      b: "failed",
      "c.txt": "unchanged",
    });
    assert.match(
      r.stderr,
      /^ferry: b: \S+\/b is a folder where the server has a file: it still holds what --delete does not remove/m,
    );
    assert.deepEqual(await Deno.readFile(`${local}/a`), await Deno.readFile(`${src}/a`));
    assert.equal(await Deno.readLink(`${local}/b/link`), `${local}/c.txt`);
    assert.deepEqual(Object.keys(await treeOf(local)).sort(), ["a", "b/link", "c.txt"]);

    // Once the symlink is gone, the next run replaces that folder too, and then has nothing left to do.
    await Deno.remove(`${local}/b/link`);
    const again = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(statuses(again), { a: "unchanged", b: "updated", "c.txt": "unchanged" });
    assert.deepEqual(await treeOf(local), await treeOf(src));
    const third = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.deepEqual(Object.values(statuses(third)), ["unchanged", "unchanged", "unchanged"], third.stderr);
  });
});

Deno.test("mirror makes the server's empty folders, and --delete keeps them, empties one the server emptied, and removes those it removed", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/logs`);
    await Deno.mkdir(`${src}/cache/deep/er`, { recursive: true });
    await Deno.mkdir(`${src}/conf.d`);
    await Deno.writeTextFile(`${src}/conf.d/a.conf`, "a\n");
    const local = `${out}/copy`;
    await Deno.mkdir(local);
    await Deno.writeTextFile(`${local}/logs`, "a file where the server has a folder\n");
    const first = await runClient(["mirror", address, "", local, "--delete"]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /^ferry: \S+\/logs: replaced a file by a directory/m);
    assert.deepEqual(await dirs(local), ["cache", "cache/deep", "cache/deep/er", "conf.d", "logs"]);
    assert.deepEqual(Object.keys(await treeOf(local)), ["conf.d/a.conf"]);

    // The server empties conf.d and drops cache/deep/er; a local empty folder of its own stays without --delete.
    await Deno.remove(`${src}/conf.d/a.conf`);
    await Deno.remove(`${src}/cache/deep`, { recursive: true });
    await Deno.mkdir(`${local}/mine`);
    const kept = await runClient(["mirror", address, "", local, "--json"]);
    assert.equal(kept.code, 0, kept.stderr);
    assert.deepEqual(await dirs(local), ["cache", "cache/deep", "cache/deep/er", "conf.d", "logs", "mine"]);
    const pruned = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.equal(pruned.code, 0, pruned.stderr);
    assert.deepEqual(statuses(pruned), { "conf.d/a.conf": "deleted" });
    assert.deepEqual(await dirs(local), ["cache", "conf.d", "logs"]);
    assert.deepEqual(await treeOf(local), {});

    // A dry run makes nothing.
    await Deno.mkdir(`${src}/new/empty`, { recursive: true });
    const dry = await runClient(["mirror", address, "", local, "--delete", "--dry-run"]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(await dirs(local), ["cache", "conf.d", "logs"]);
  });
});

Deno.test("a part's name holds a long file name by a stem of whole characters and a hash, within 255 bytes", () => {
  const bytes = (text: string) => new TextEncoder().encode(text).length;
  assert.equal(partStem("short.txt"), "short.txt");
  const ascii = "a".repeat(255), accented = "é".repeat(127), other = `${"a".repeat(254)}b`;
  for (const name of [ascii, accented, other]) {
    const stem = partStem(name);
    assert.match(stem, /~[0-9a-f]{16}$/);
    assert.ok(name.startsWith(stem.slice(0, stem.lastIndexOf("~"))), "whole characters of the name");
    assert.ok(bytes(partName(name, "f".repeat(64))) <= 255);
  }
  assert.notEqual(partStem(ascii), partStem(other));
});

Deno.test("--delete keeps the part of a file whose long name its part holds as a stem, and removes one of a file gone", async () => {
  await using dir = await tempDir();
  const kept = `sub/${"k".repeat(240)}`, gone = `sub/${"g".repeat(240)}`;
  await Deno.mkdir(`${dir.path}/sub`);
  for (const rel of [kept, gone]) {
    await Deno.writeTextFile(`${dir.path}/${rel}`, "old\n");
    const base = rel.slice("sub/".length);
    await Deno.writeTextFile(`${dir.path}/sub/${partName(base, "0123456789abcdef0123456789abcdef")}`, "par");
  }
  using tree = LocalTree.open(dir.path);
  const deleted: string[] = [];
  await deleteExtraneous("", tree, new Set([kept]), (report, rel) => {
    if (report.status === "deleted") deleted.push(rel);
  });
  assert.deepEqual(deleted, [gone]);
  assert.deepEqual(
    (await listDir(`${dir.path}/sub`)).sort(),
    [
      kept.slice("sub/".length),
      partName(kept.slice("sub/".length), "0123456789abcdef0123456789abcdef"),
    ].sort(),
  );
});

Deno.test("mirror and get fetch files whose names take all of NAME_MAX, and patch a large one by delta", async () => {
  await withServer(async ({ src, out, address }) => {
    const names = ["a".repeat(255), "é".repeat(127), `big-${"b".repeat(251)}`];
    await Deno.writeTextFile(`${src}/${names[0]}`, "ascii\n");
    await Deno.writeTextFile(`${src}/${names[1]}`, "accented\n");
    await makeFile(src, names[2], 3 * MiB);
    const local = `${out}/copy`;
    const first = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(await treeOf(local), await treeOf(src));
    // 4 KiB changed in the large file: a delta, built in a part named by the stem.
    using file = await Deno.open(`${src}/${names[2]}`, { write: true });
    await file.seek(MiB, Deno.SeekMode.Start);
    await file.write(new Uint8Array(4096).fill(7));
    const again = await runClient(["mirror", address, "", local, "--delete", "--json"]);
    assert.equal(again.code, 0, again.stderr);
    const big = jsonLines(again).find((l) => l.path === names[2])!;
    assert.equal(big.status, "updated");
    assert.ok((big.bytes as number) < MiB, `only the change came: ${big.bytes} bytes`);
    assert.deepEqual(await treeOf(local), await treeOf(src));
    const got = await runClient(["get", address, names[1], "-o", `${out}/${names[1]}`]);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(await Deno.readTextFile(`${out}/${names[1]}`), "accented\n");
  });
});

Deno.test("mirror of a missing or non-directory REMOTE_DIR exits 5 and creates nothing", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/file.txt`, "a file\n");
    for (const [dir, code] of [["nope", "NOT_FOUND"], ["file.txt", "NOT_A_FILE"]]) {
      const r = await runClient(["mirror", address, dir, `${out}/copy`]);
      assert.equal(r.code, 5, r.stderr);
      const quoted = dir.replace(".", "\\.");
      assert.match(
        r.stderr,
        new RegExp(`^ferry: server refused the listing of "${quoted}": ${code}[^\\n]*\\n$`),
      );
      await assert.rejects(Deno.stat(`${out}/copy`), Deno.errors.NotFound);
    }
  });
});

Deno.test("mirror into a LOCAL_DIR that is a file exits 8 with one line saying so, and leaves the file as it was", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "a\n");
    await Deno.writeTextFile(`${out}/copy`, "not a folder\n");
    const r = await runClient(["mirror", address, "", `${out}/copy`]);
    assert.equal(r.code, 8, r.stderr);
    assert.match(r.stderr, /^ferry: cannot mirror into \S+\/copy: it is not a directory\n$/);
    assert.equal(await Deno.readTextFile(`${out}/copy`), "not a folder\n");
  });
});

Deno.test("REMOTE_DIR is normalized and listed paths are mapped below LOCAL_DIR, never outside it", () => {
  assert.equal(normalizeRemoteDir("."), "");
  assert.equal(normalizeRemoteDir("/"), "");
  assert.equal(normalizeRemoteDir("./a//b/"), "a/b");
  assert.throws(() => normalizeRemoteDir("a/../b"), /must not contain '\.\.'/);
  assert.equal(localRelative("a/b/c.txt", "a"), "b/c.txt");
  assert.equal(localRelative("top.txt", ""), "top.txt");
  assert.equal(localRelative("ab/c.txt", "a"), null, "a sibling folder with the same prefix is not below");
  assert.equal(localRelative("a/../../etc/passwd", "a"), null);
  assert.equal(localRelative("a//x", "a"), null);
  assert.equal(localRelative("/etc/passwd", ""), null);
});

/**
 * A front for the server that closes the first `dropped` connections as soon as they arrive (a server
 * restarting, as a client sees it) and joins the later ones to the server.
 */
function restartingFront(
  serverPort: number,
  dropped: number,
): { address: string; seen: () => number } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let seen = 0;
  const pipes: Promise<unknown>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      if (++seen <= dropped) {
        conn.close();
        continue;
      }
      const server = await Deno.connect({ hostname: "127.0.0.1", port: serverPort });
      pipes.push(
        conn.readable.pipeTo(server.writable).catch(() => {}),
        server.readable.pipeTo(conn.writable).catch(() => {}),
      );
    }
  })();
  return {
    address: `127.0.0.1:${listener.addr.port}`,
    seen: () => seen,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting.catch(() => {});
      await Promise.all(pipes);
    },
  };
}

Deno.test("with --timeout, mirror retries until the deadline, not only --retries times; without, it says after how many attempts it gave up", async () => {
  await withServer(async ({ src, out, server }) => {
    await makeFile(src, "f.bin", 1000);
    {
      await using front = restartingFront(server.ports[0], 4);
      const gaveUp = await runClient(["mirror", front.address, ".", `${out}/a`]);
      assert.notEqual(gaveUp.code, 0, gaveUp.stderr);
      assert.match(gaveUp.stderr, /\(after 4 attempts\)/);
      assert.equal(front.seen(), 4, "the first try and the default 3 retries");
    }
    await using front = restartingFront(server.ports[0], 4);
    const waited = await runClient(["mirror", front.address, ".", `${out}/b`, "--timeout", "60"]);
    assert.equal(waited.code, 0, waited.stderr);
    assert.deepEqual(await treeOf(`${out}/b`), await treeOf(src));
    assert.ok(front.seen() >= 5, `tried past 4 refusals (${front.seen()} connections)`);
  });
});

Deno.test("mirror gives each file the server's permission bits, those the umask would take out too", async () => {
  await withServer(async ({ src, out, address }) => {
    const modes: Record<string, number> = {
      "plain.txt": 0o644,
      "script.sh": 0o755,
      "shared.txt": 0o664, // g+w: the usual umask (022) would take it out at creation
      "private.txt": 0o600,
      "read-only.txt": 0o444, // the owner cannot write it: created writable, then set
    };
    for (const [name, mode] of Object.entries(modes)) {
      await Deno.writeTextFile(`${src}/${name}`, `${name}\n`);
      await Deno.chmod(`${src}/${name}`, mode);
    }
    const r = await runClient(["mirror", address, ".", out]);
    assert.equal(r.code, 0, r.stderr);
    for (const [name, mode] of Object.entries(modes)) {
      assert.equal((await Deno.stat(`${out}/${name}`)).mode! & 0o777, mode, name);
    }
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});
