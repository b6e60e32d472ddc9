/**
 * A streamed listing asked with `known` (the digests of the folders whose files the client holds) sends one
 * FolderRecord for each such folder the server still holds as it was, in place of its files' entries; a
 * folder changed since, or one whose listing takes more than an fstatat per file (a symlink in it), is
 * listed file by file. `mirror` names the folders its state records, and ends with the same tree either way.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  encodeJsonFrame,
  END_FRAME,
  FrameType,
  MAX_KNOWN_FOLDER_FILES,
  MAX_KNOWN_FOLDERS,
} from "../framing.ts";
import { compareUtf8, loadHashing } from "../hashing.ts";
import { jsonLines, logged, withServer } from "./client_fixture.ts";
import {
  answerUntilClosed,
  assertListRefused,
  folderDigestsOf,
  RawConnection,
  readRequest,
  runClient,
  streamedListing,
  tempDir,
  treeOf,
} from "./helpers.ts";

Deno.test("with known, a folder held as it was comes as one record; a changed one, or one with a symlink, file by file", async () => {
  await loadHashing();
  await withServer(async ({ src, server }) => {
    for (const dir of ["a", "a/sub", "b"]) await Deno.mkdir(`${src}/${dir}`);
    for (const path of ["top.txt", "a/1.txt", "a/2.txt", "a/3.txt", "a/sub/x.txt", "b/y.txt"]) {
      await Deno.writeTextFile(`${src}/${path}`, `${path}\n`);
    }
    await Deno.symlink("y.txt", `${src}/b/link.txt`);
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const plain = await streamedListing(conn, {});
      assert.equal(plain.values.length, 7);
      const digests = folderDigestsOf(plain.values);
      const known = ["", "a", "b"].map((folder) => digests.get(folder)!);

      const first = await streamedListing(conn, { known });
      assert.deepEqual(first.values, [
        { folder: "", files: 1 },
        { folder: "a", files: 3 },
        plain.values.find((e) => e.path === "a/sub/x.txt")!,
        // A symlink's entry takes an open of what it leads to: its folder gets no digest.
        plain.values.find((e) => e.path === "b/link.txt")!,
        plain.values.find((e) => e.path === "b/y.txt")!,
      ]);
      assert.equal(first.listed, 5, "listed counts the records");
      await logged(server, /LIST "" recursive stream known=3 .*result=ok listed=5 known-folders=2$/);

      // Another version of a/2.txt: a's digest no longer matches, and its files are listed.
      await Deno.writeTextFile(`${src}/a/2.txt`, "changed, and longer\n");
      const second = await streamedListing(conn, { known });
      assert.deepEqual(second.values.map((v) => v.folder ?? v.path), [
        "",
        "a/1.txt",
        "a/2.txt",
        "a/3.txt",
        "a/sub/x.txt",
        "b/link.txt",
        "b/y.txt",
      ]);
      assert.notEqual(second.values[2].etag, plain.values.find((e) => e.path === "a/2.txt")!.etag);
    } finally {
      conn.close();
    }
  });
});

Deno.test("compareUtf8 orders names as their UTF-8 bytes, as a listing does, where JavaScript's order does not", () => {
  const utf8 = new TextEncoder();
  const pieces = [
    "a",
    "z",
    "\u00e9",
    "\u07ff",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\u{10000}",
    "\u{1f600}",
    "\u{10ffff}",
  ];
  const names = Array.from({ length: 400 }, (_, i) => {
    let name = "";
    for (let k = 0; k < 1 + (i % 4); k++) name += pieces[(i * 7 + k * 13 + (i >> 3)) % pieces.length];
    return name;
  });
  const byBytes = [...names].sort((a, b) => Buffer.compare(utf8.encode(a), utf8.encode(b)));
  assert.deepEqual([...names].sort(compareUtf8), byBytes);
  assert.notDeepEqual([...names].sort(), byBytes, "JavaScript's own order differs for these names");
});

Deno.test("'known' that is not a list of at most MAX_KNOWN_FOLDERS digests, or without 'stream', is BAD_REQUEST", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "a");
    const digest = "A".repeat(22);
    const message =
      `'known' is not a list of at most ${MAX_KNOWN_FOLDERS} folder digests (22 characters of base64url)`;
    for (
      const [request, expected] of [
        [{ stream: true, known: digest }, message],
        [{ stream: true, known: [digest.slice(1)] }, message],
        [{ stream: true, known: [`${digest.slice(1)}+`] }, message],
        [{ stream: true, known: [1] }, message],
        [{ stream: true, known: new Array(MAX_KNOWN_FOLDERS + 1).fill(digest) }, message],
        [{ known: [digest] }, "'known' needs 'stream'"],
      ] as const
    ) {
      await assertListRefused(server.ports[0], request as Record<string, unknown>, expected);
    }
  });
});

Deno.test("mirror names the folders its state records: unchanged ones come as records, and the tree ends the same, local changes undone", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`;
    for (const dir of ["site", "site/css", "site/img", "site/intl"]) await Deno.mkdir(`${src}/${dir}`);
    for (let i = 0; i < 5; i++) {
      await Deno.writeTextFile(`${src}/site/css/${i}.css`, `body { order: ${i} }\n`);
      await Deno.writeTextFile(`${src}/site/img/${i}.svg`, `<svg id="${i}"/>\n`);
    }
    // Names whose UTF-8 byte order (the listing's, and the digest's) is not JavaScript's string order.
    for (const name of ["a\u{1f600}.txt", "a\ue000.txt", "\u00e9.txt", "z.txt"]) {
      await Deno.writeTextFile(`${src}/site/intl/${name}`, `${name}\n`);
    }
    await Deno.writeTextFile(`${src}/site/index.html`, "<html></html>\n");
    const address = `127.0.0.1:${server.ports[0]}`;
    const mirror = () => runClient(["mirror", "--delete", "-q", address, "site", out]);
    assert.equal((await mirror()).code, 0);
    assert.equal((await mirror()).code, 0);
    await logged(
      server,
      /LIST "site" recursive stream .*known=4 .*result=ok listed=4 inlined=0 known-folders=4 partial-folders=0$/,
    );

    // The server changes a file of css/; here, a file of img/ is overwritten with other bytes of the same
    // size, and a stray file is added to img/: the server's img/ is as recorded, the local one is not.
    await Deno.writeTextFile(`${src}/site/css/3.css`, "body { order: 33 }\n");
    await Deno.writeTextFile(`${out}/img/2.svg`, '<svg id="Y"/>\n');
    await Deno.writeTextFile(`${out}/img/stray.svg`, "<svg/>\n");
    assert.equal((await mirror()).code, 0);
    // css/ comes whole, or as a partial record and 3.css's entry if its other files were written before
    // the first run's walk began.
    await logged(
      server,
      /LIST "site" recursive stream .*known=4 .*result=ok listed=(8 inlined=1 known-folders=3 partial-folders=0|5 inlined=1 known-folders=3 partial-folders=1)$/,
    );
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/site`));
  });
});

Deno.test("--delete in a run that finds a folder as recorded still looks below it: a file added to its subfolder is deleted", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`;
    await Deno.mkdir(`${src}/tree/a/sub`, { recursive: true });
    for (let i = 0; i < 4; i++) await Deno.writeTextFile(`${src}/tree/a/${i}.txt`, `a${i}\n`);
    await Deno.writeTextFile(`${src}/tree/a/sub/s.txt`, "s\n");
    const address = `127.0.0.1:${server.ports[0]}`;
    const mirror = () => runClient(["mirror", "--delete", "--json", address, "tree", out]);
    assert.equal((await mirror()).code, 0);
    assert.equal((await mirror()).code, 0);
    // a/ is recorded here as holding its four files and sub/ (a folder line of the state)...
    const state = await Deno.readTextFile(`${out}/.ferry/state`);
    assert.match(state, /\ndir [^\n]*\ta\n/, state);

    // ...and stays so when a file is added to sub/, whose own identity moves.
    await Deno.writeTextFile(`${out}/a/sub/extra.txt`, "not the server's\n");
    const r = await mirror();
    assert.equal(r.code, 0, r.stderr);
    await logged(
      server,
      /LIST "tree" .*known=2 .*result=ok listed=2 inlined=0 known-folders=2 partial-folders=0$/,
    );
    const statuses = jsonLines(r)
      .filter((line) => line.status !== undefined && line.status !== "unchanged")
      .map((line) => [line.path, line.status]);
    assert.deepEqual(statuses, [["tree/a/sub/extra.txt", "deleted"]]);
    assert.match(r.stderr, /mirror done: 0 updated, 5 unchanged, 1 deleted, 0 failed\n$/);
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
  });
});

Deno.test("a state without folder digests gets them from the next run; one whose digest disagrees with its entries has the listing asked for again whole", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`, statePath = `${out}/.ferry/state`;
    for (const folder of ["a", "b"]) {
      await Deno.mkdir(`${src}/tree/${folder}`, { recursive: true });
      for (let i = 0; i < 4; i++) {
        await Deno.writeTextFile(`${src}/tree/${folder}/${i}.txt`, `${folder}${i}\n`);
      }
    }
    const address = `127.0.0.1:${server.ports[0]}`;
    const mirror = () => runClient(["mirror", "--delete", "-q", address, "tree", out]);
    assert.equal((await mirror()).code, 0);
    const lines = async () => (await Deno.readTextFile(statePath)).split("\n");
    assert.deepEqual(
      (await lines()).filter((l) => l.startsWith("known ")).map((l) => l.split("\t").slice(1)),
      [
        ["4", "tree/a"],
        ["4", "tree/b"],
      ],
    );

    // As an older client writes it: no digest lines. A run that changes nothing adds them.
    await Deno.writeTextFile(statePath, (await lines()).filter((l) => !l.startsWith("known ")).join("\n"));
    assert.equal((await mirror()).code, 0);
    await logged(server, /LIST "tree" recursive stream since=[0-9]+ .*result=ok listed=8 inlined=0$/);
    assert.equal((await lines()).filter((l) => l.startsWith("known ")).length, 2);
    assert.equal((await mirror()).code, 0);
    await logged(
      server,
      /LIST "tree" .*known=2 .*result=ok listed=2 inlined=0 known-folders=2 partial-folders=0$/,
    );

    // a/1.txt's line is gone, a's digest line still counts four files: its record does not agree with the
    // state, and the listing is asked for again without `known`. The file is hashed, and found current.
    await Deno.writeTextFile(
      statePath,
      (await lines()).filter((l) => !l.endsWith("\ttree/a/1.txt") && !l.endsWith("\ta/1.txt")).join("\n"),
    );
    const r = await runClient(["mirror", "--delete", "--json", address, "tree", out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /mirror done: 0 updated, 8 unchanged, 0 deleted, 0 failed\n$/);
    await logged(
      server,
      /LIST "tree" .*known=2 .*result=ok listed=2 inlined=0 known-folders=2 partial-folders=0$/,
      2,
    );
    await logged(server, /LIST "tree" recursive stream since=[0-9]+ .*result=ok listed=8 inlined=0$/, 2);
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
  });
});

Deno.test("a record the client cannot use (of a folder it did not name, or a malformed partial record) is unusable: the mirror says so, and --delete deletes nothing", async () => {
  for (
    const [record, message] of [
      [
        { folder: "site/x", files: 3 },
        /the listing has a record of a folder whose files this run did not say it holds: \{"folder":"site\/x","files":3\}/,
      ],
      [
        { folder: "site/x", files: 3, digest: "A".repeat(22), changed: [["../up", "e"]] },
        /the listing has a malformed partial record: \{"folder":"site\/x"/,
      ],
    ] as const
  ) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const served = (async () => {
      const conn = await listener.accept();
      // One streamed listing that holds the record, whatever the request.
      await readRequest(conn);
      await answerUntilClosed(conn, [
        encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", stream: true, walkedAt: "1" }),
        encodeJsonFrame(FrameType.Entries, { entries: [record] }),
        encodeJsonFrame(FrameType.Trailer, { listed: 1, truncated: false, leftOut: { count: 0, first: [] } }),
        END_FRAME,
      ]);
      conn.close();
      listener.close();
    })();
    await using dir = await tempDir();
    await Deno.writeTextFile(`${dir.path}/stray.txt`, "mine\n");
    const address = `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
    const r = await runClient(["mirror", "--delete", address, "site", dir.path]);
    await served;
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, message);
    assert.match(
      r.stderr,
      /the server's listing is incomplete: 1 entries unusable: what it listed was mirrored, and --delete was skipped/,
    );
    assert.equal(await Deno.readTextFile(`${dir.path}/stray.txt`), "mine\n");
  }
});

Deno.test("a folder of more than MAX_KNOWN_FOLDER_FILES files gets no digest; one of more files than a walk looks at in a turn still gets one", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`, statePath = `${out}/.ferry/state`;
    await Deno.mkdir(`${src}/flat/mid`, { recursive: true });
    for (let i = 0; i <= MAX_KNOWN_FOLDER_FILES; i++) {
      await Deno.writeTextFile(`${src}/flat/${i}.txt`, `${i}\n`);
    }
    // More files than a walk looks at in one turn (256).
    for (let i = 0; i < 600; i++) await Deno.writeTextFile(`${src}/flat/mid/${i}.txt`, `mid ${i}\n`);
    const address = `127.0.0.1:${server.ports[0]}`;
    const mirror = () => runClient(["mirror", "--delete", "-q", address, "flat", out]);
    assert.equal((await mirror()).code, 0);
    // The second run records again what the first published in the clock tick it wrote the state in.
    assert.equal((await mirror()).code, 0);
    const written = await Deno.readTextFile(statePath);
    assert.deepEqual(
      written.split("\n").filter((l) => l.startsWith("known ")).map((l) => l.split("\t").slice(1)),
      [["600", "flat/mid"]],
    );
    const { mtime } = await Deno.stat(statePath);
    assert.equal((await mirror()).code, 0);
    const [, , third] = await logged(server, /LIST "flat" /, 3);
    assert.match(third, / known=1 .*result=ok listed=1026 inlined=0 known-folders=1 partial-folders=0$/);
    assert.equal(
      await Deno.readTextFile(statePath),
      written,
      "a run that changes nothing does not write the state",
    );
    assert.equal((await Deno.stat(statePath)).mtime?.getTime(), mtime?.getTime());
  });
});
