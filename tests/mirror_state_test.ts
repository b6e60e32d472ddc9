/**
 * What `mirror` remembers between runs (`.ferry/state`) and what it trusts: in process for the rules one
 * by one, then with a real server and real files for what a run does when a file changed behind the
 * state's back or the state itself is lost, truncated or wrong.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  loadState,
  type LocalIdentity,
  MirrorState,
  RACY_WINDOW_SECONDS,
  readStateHead,
  saveState,
  type StateEntry,
  StateFile,
  stateSince,
} from "../client/mirror_state.ts";
import { LocalDir } from "../client/local_tree.ts";
import { close, coarseClockNow, identityAt, openRead } from "../ffi/libc.ts";
import { decodeStatIdentity, S_IFREG, STAT } from "../ffi/structs.ts";
import { jsonLines, withServer } from "./client_fixture.ts";
import { type ClientResult, runClient, tempDir, treeOf } from "./helpers.ts";

// libc is bound on first use and stays bound: bound before the tests, as the sanitizer counts it a leak.
{
  const fd = openRead(".", { directory: true });
  identityAt(fd, ".");
  close(fd);
  const dir = Deno.makeTempDirSync();
  const root = LocalDir.open(dir);
  saveState(root, new MirrorState());
  loadState(root);
  coarseClockNow();
  root.close();
  Deno.removeSync(dir, { recursive: true });
}

const SHA = "ab".repeat(32);
/** The ctime in {@link entry}'s key, in seconds. */
const CTIME = 1_799_999_999.5;
/** A state written well after the entry's ctime. */
const WRITTEN = CTIME + 10 * RACY_WINDOW_SECONDS;

function entry(fields: Partial<StateEntry> = {}): StateEntry {
  return {
    key: "4096:1234:1700000000.123456789:1799999999.500000000",
    sha256: SHA,
    etag: "0123456789abcdef0123456789abcdef",
    ...fields,
  };
}

/** What lstat would say of a regular file with the identity `key`: its `struct stat`, decoded. */
function seen(key = entry().key): LocalIdentity {
  const [size, ino, mtime, ctime] = key.split(":");
  const words = new Uint32Array(STAT.size / 4);
  const put = (at: number, value: string) => {
    words[at / 4] = Number(value) % 2 ** 32;
    words[at / 4 + 1] = Math.floor(Number(value) / 2 ** 32);
  };
  const putTime = (at: number, time: string) => {
    const [seconds, nanoseconds] = time.split(".");
    put(at, seconds);
    words[at / 4 + 2] = Number(nanoseconds);
  };
  words[STAT.st_mode / 4] = S_IFREG | 0o644;
  put(STAT.st_size, size);
  put(STAT.st_ino, ino);
  putTime(STAT.st_mtim, mtime);
  putTime(STAT.st_ctim, ctime);
  const identity = decodeStatIdentity(words);
  assert.equal(identity.key, key, "the words hold the key");
  return identity;
}

const roundTrip = (state: MirrorState, writtenAt = WRITTEN) => MirrorState.parse(state.format(), writtenAt);

Deno.test("state: an entry whose identity still matches is trusted after a save and a load, whatever its path", () => {
  const state = new MirrorState();
  const paths = ["d/a.txt", "tab\there/new\nline.txt", '"quoted".txt', 'plain "inside".txt'];
  for (const path of paths) state.set(path, entry());
  const loaded = roundTrip(state);
  assert.equal(loaded.size, paths.length);
  for (const path of paths) assert.deepEqual(loaded.trusted(path, seen()), entry(), path);
});

Deno.test("state: another identity (size, inode, mtime or ctime) is not trusted, nor a path never recorded", () => {
  const state = new MirrorState();
  state.set("f", entry());
  const loaded = roundTrip(state);
  for (
    const key of [
      "4095:1234:1700000000.123456789:1799999999.500000000",
      "4096:1235:1700000000.123456789:1799999999.500000000",
      "4096:1234:1700000000.123456788:1799999999.500000000",
      "4096:1234:1700000000.123456789:1799999999.500000001",
    ]
  ) {
    assert.equal(loaded.trusted("f", seen(key)), undefined, key);
    assert.equal(loaded.vouchesFor("f", seen(key)), false, key);
  }
  assert.equal(loaded.trusted("g", seen()), undefined);
  assert.equal(loaded.vouchesFor("g", seen()), false);
  assert.equal(loaded.vouchesFor("f", seen()), true, "vouchesFor answers as trusted does, without the entry");
});

Deno.test("state: an entry recorded in the clock tick the state was written in is not trusted (racy clean)", () => {
  const state = new MirrorState();
  state.set("racy", entry());
  assert.equal(roundTrip(state, CTIME + RACY_WINDOW_SECONDS / 2).trusted("racy", seen()), undefined);
  assert.equal(roundTrip(state, CTIME + RACY_WINDOW_SECONDS / 2).vouchesFor("racy", seen()), false);
  assert.equal(roundTrip(state, CTIME + 2 * RACY_WINDOW_SECONDS).vouchesFor("racy", seen()), true);
  assert.deepEqual(
    roundTrip(state, CTIME + 2 * RACY_WINDOW_SECONDS).trusted("racy", seen()),
    entry(),
  );
});

Deno.test("state: bad lines are skipped and a foreign or cut file gives no entry; nothing throws", () => {
  const state = new MirrorState();
  state.set("good", entry());
  const text = state.format();
  const damaged = text + [
    // The identity a local file has, with a field that is not well formed.
    `${entry().key}\tnot-a-hash\t\tbad-hash`,
    `${entry().key}\t${"gh".repeat(32)}\t\tnot-hex`,
    `${entry().key}\t${SHA}\tnot an etag\tbad-etag`,
    `${entry().key}\t${SHA}\t${"e".repeat(129)}\tlong-etag`,
    `-1:1:1.000000001:1.000000001\t${SHA}\t\tnegative`,
    `4096:1:1.1:1.1\t${SHA}\t\tshort nanoseconds`,
    `4096:1:1.000000001:1.000000001\t${SHA}\t\t"unterminated`,
    `4096:1:1.000000001:1.000000001\t${SHA}`,
    "",
  ].join("\n");
  const loaded = MirrorState.parse(damaged, WRITTEN);
  assert.deepEqual(loaded.trusted("good", seen()), entry());
  // vouchesFor reads the identity alone: a line of the file's identity vouches for it, whatever follows it;
  // trusted, which gives the fields, refuses (and forgets) one whose fields are malformed.
  const vouching = MirrorState.parse(damaged, WRITTEN);
  for (const path of ["bad-hash", "not-hex", "bad-etag", "long-etag"]) {
    assert.equal(vouching.vouchesFor(path, seen()), true, path);
  }
  for (const path of ["negative", "short nanoseconds"]) {
    assert.equal(vouching.vouchesFor(path, seen()), false, path);
  }
  for (const path of ["bad-hash", "not-hex", "bad-etag", "long-etag", "negative", "short nanoseconds"]) {
    assert.equal(loaded.trusted(path, seen()), undefined, path);
  }
  // Written again, lines go out as they came in (a run forgets a malformed one when it looks its file up),
  // and are no more trusted for that.
  const again = MirrorState.parse(loaded.format(), WRITTEN);
  assert.deepEqual(again.trusted("good", seen()), entry());
  for (const path of ["bad-hash", "not-hex", "bad-etag", "long-etag", "negative", "short nanoseconds"]) {
    assert.equal(again.trusted(path, seen()), undefined, `${path}, written again`);
  }
  assert.equal(MirrorState.parse("something else\n" + text, WRITTEN).size, 0);
  assert.equal(
    MirrorState.parse(text.slice(0, text.length - 8), WRITTEN).size,
    0,
    "cut inside its only entry",
  );
});

Deno.test("state: a folder's files as read are its paths once each, whatever the order of their lines; a path's last line is its entry", () => {
  const older = entry({ key: "4096:99:1700000000.123456789:1799999999.500000000" });
  const line = (path: string, e = entry()) => `${e.key}\t${e.sha256}\t${e.etag}\t${path}\n`;
  const text = "ferry-mirror-state 2\n" +
    line("d/b") + line("top") + line("d/a", older) + line("e/x") + line("d/a") + line('"d/q\\tuoted"') +
    line("d/c\td");
  const state = MirrorState.parse(text, WRITTEN);
  assert.deepEqual(
    state.filesAsRead("d"),
    ["d/b", "d/a", "d/q\tuoted"],
    "in the order of each path's first line",
  );
  assert.deepEqual(state.filesAsRead(""), ["top"]);
  assert.deepEqual(state.filesAsRead("e"), ["e/x"]);
  // d/a's second line holds the identity its file has; its first, an older one.
  assert.equal(state.vouchesForFileAsRead("d", 1, seen()), true);
  assert.equal(state.vouchesForFileAsRead("d", 1, seen(older.key)), false);
  assert.equal(state.vouchesForFileAsRead("d", 2, seen()), true, "a quoted path");
  assert.equal(state.vouchesForFileAsRead("d", 3, seen()), false, "past the folder's files");
  // Once an entry changes, the answer comes by path, as vouchesFor gives it.
  state.delete("d/b");
  assert.equal(state.vouchesForFileAsRead("d", 0, seen()), false, "forgotten");
  assert.equal(state.vouchesForFileAsRead("d", 1, seen()), true);
  assert.equal(state.size, 4);
  assert.deepEqual(state.expectedFolders().get("d")?.files, ["d/a", "d/q\tuoted"]);
});

Deno.test("state: a file whose last line has no line break gets one before what a run records after it", () => {
  const state = new MirrorState();
  for (const path of ["first", "last"]) state.set(path, entry());
  const loaded = MirrorState.parse(state.format().trimEnd(), WRITTEN);
  loaded.set("recorded", entry());
  const again = MirrorState.parse(loaded.format(), WRITTEN);
  assert.equal(again.size, 3);
  for (const path of ["first", "last", "recorded"]) {
    assert.deepEqual(again.trusted(path, seen()), entry(), path);
  }
});

Deno.test("state: a folder recorded with its identity gives back its files and folders while it has that identity, and only then", () => {
  const FOLDER = "4096:77:1700000000.000000000:1799999999.500000000";
  const state = new MirrorState();
  for (const path of ["top.txt", "d/a.txt", "d/b.txt", "d/e/deep.txt"]) state.set(path, entry());
  const expected = state.expectedFolders();
  assert.deepEqual(expected.get("d"), { files: ["d/a.txt", "d/b.txt"], subfolders: ["e"] });
  assert.deepEqual(
    expected.get(""),
    { files: ["top.txt"], subfolders: [".ferry", "d"] },
    "and the state's own",
  );
  state.recordFolders(
    new Map([["", { key: FOLDER, names: ["top.txt", "d", ".ferry"] }], ["d", {
      key: FOLDER,
      names: ["e", "b.txt", "a.txt"],
    }]]),
  );
  const text = state.format();

  const loaded = MirrorState.parse(text, WRITTEN);
  assert.deepEqual(loaded.recordedFolder("d", FOLDER), { files: ["d/a.txt", "d/b.txt"], subfolders: ["e"] });
  assert.deepEqual(loaded.recordedFolder("", FOLDER), { files: ["top.txt"], subfolders: [".ferry", "d"] });
  assert.equal(loaded.recordedFolder("d", FOLDER.replace(":77:", ":78:")), undefined, "another identity");
  assert.equal(loaded.recordedFolder("d/e", FOLDER), undefined, "a folder never recorded");
  assert.equal(
    MirrorState.parse(text, CTIME + RACY_WINDOW_SECONDS / 2).recordedFolder("d", FOLDER),
    undefined,
    "racy",
  );
  // Recorded again as it was (names null: the digest the state has), by a run that found it so; a folder
  // said to be so under another identity, or never recorded, is left out.
  const again = MirrorState.parse(text, WRITTEN);
  again.recordFolders(
    new Map([
      ["d", { key: FOLDER, names: null }],
      ["", { key: FOLDER.replace(":77:", ":78:"), names: null }],
      [
        "d/e",
        { key: FOLDER, names: null },
      ],
    ]),
  );
  const reloaded = MirrorState.parse(again.format(), WRITTEN);
  assert.deepEqual(reloaded.recordedFolder("d", FOLDER), {
    files: ["d/a.txt", "d/b.txt"],
    subfolders: ["e"],
  });
  assert.equal(reloaded.recordedFolder("", FOLDER), undefined);
  assert.equal(reloaded.recordedFolder("", FOLDER.replace(":77:", ":78:")), undefined);
  assert.equal(reloaded.recordedFolder("d/e", FOLDER), undefined);

  // A file line taken out, added, or renamed behind the folder line's back: the folder is read instead.
  const lines = text.split("\n");
  const without = lines.filter((line) => !line.endsWith("\td/b.txt")).join("\n");
  const added = text.replace(
    "\td/b.txt\n",
    "\td/b.txt\n" + lines.find((l) => l.endsWith("\td/a.txt"))!.replace("d/a.txt", "d/c.txt") + "\n",
  );
  const renamed = text.replace("\td/b.txt\n", "\td/x.txt\n");
  for (const [what, damaged] of [["taken out", without], ["added", added], ["renamed", renamed]]) {
    const state = MirrorState.parse(damaged, WRITTEN);
    assert.equal(state.recordedFolder("d", FOLDER), undefined, what);
    assert.notEqual(state.recordedFolder("", FOLDER), undefined, `${what}: the folder above is as it was`);
  }
});

Deno.test("state: saved once settle() returns, the state vouches for the file a run published last", async () => {
  await using dir = await tempDir();
  const root = LocalDir.open(dir.path);
  try {
    for (let i = 0; i < 10; i++) {
      Deno.writeFileSync(`${dir.path}/f`, new Uint8Array([i]));
      const local = identityAt(root.fd, "f")!;
      const state = new MirrorState();
      state.set("f", entry({ key: local.key }));
      await state.settle();
      saveState(root, state);
      assert.equal(loadState(root).vouchesFor("f", local), true, `round ${i}: ${local.key}`);
    }
  } finally {
    root.close();
  }
});

Deno.test("state: `since` is kept with the state and read from its first lines alone; a state without it, or with a malformed one, has none", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const root = LocalDir.open(dir);
    const state = new MirrorState();
    state.set("a.txt", entry());
    state.since = "1800000000123456789";
    saveState(root, state);
    assert.equal(loadState(root).since, "1800000000123456789");
    assert.equal(stateSince(dir), "1800000000123456789");
    assert.deepEqual(roundTrip(state).trusted("a.txt", seen()), entry(), "the entries are read as before");
    state.since = undefined;
    saveState(root, state);
    assert.equal(stateSince(dir), undefined);
    assert.equal(loadState(root).since, undefined);
    Deno.writeTextFileSync(`${dir}/.ferry/state`, "ferry-mirror-state 2\nsince 12ab\n");
    assert.equal(stateSince(dir), undefined);
    assert.equal(loadState(root).since, undefined);
    root.close();
    // A symlink planted at the state is not followed.
    Deno.removeSync(`${dir}/.ferry/state`);
    Deno.writeTextFileSync(`${dir}/elsewhere`, "ferry-mirror-state 2\nsince 1800000000123456789\n");
    Deno.symlinkSync("../elsewhere", `${dir}/.ferry/state`);
    assert.equal(stateSince(dir), undefined);
    assert.equal(stateSince(`${dir}/missing`), undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("state: folder digests are written with it and read back; one written with none says so, one of an older client has none made", () => {
  const state = new MirrorState();
  state.set("a/1.txt", entry({ etag: "e1" }));
  state.set("a/2.txt", entry({ etag: "e2" }));
  state.set("b.txt", entry({ etag: "" }));
  assert.deepEqual(
    [...state.knownFiles()],
    [["a", ["a/1.txt", "a/2.txt"]]],
    "a folder with a file of no known etag gets no digest",
  );
  assert.deepEqual(["a/1.txt", "a/2.txt"].map((path) => state.recordedEtag(path)), ["e1", "e2"]);
  assert.equal(state.digested, false);
  const digest = "A".repeat(22);
  state.setKnownFolders(new Map([["tree/a", { digest, files: 2 }]]));
  const read = roundTrip(state);
  assert.equal(read.digested, true);
  assert.deepEqual([...read.knownFolders], [["tree/a", { digest, files: 2 }]]);
  assert.deepEqual(read.trusted("a/1.txt", seen()), entry({ etag: "e1" }), "the entries are read as before");
  assert.deepEqual(read.recordedFields("a/2.txt"), { size: 4096, sha256: SHA, etag: "e2" });
  state.setKnownFolders(new Map());
  const none = roundTrip(state);
  assert.equal(none.digested, true);
  assert.equal(none.knownFolders.size, 0);
  const older = MirrorState.parse(state.format().replace(/^known .*\n/m, ""), WRITTEN);
  assert.equal(older.digested, false);
  assert.equal(older.size, 3);
  // A malformed digest line is skipped, and still says its writer made digests.
  const bad = MirrorState.parse(
    state.format().replace(/^known .*$/m, `known ${digest}\tmany\ttree/a`),
    WRITTEN,
  );
  assert.equal(bad.knownFolders.size, 0);
  assert.equal(bad.digested, true);
});

Deno.test("state: its first lines hold since and the folder digests, read alone from the file that the whole state is then read from", async () => {
  await using dir = await tempDir();
  const root = LocalDir.open(dir.path);
  try {
    const digest = "A".repeat(22);
    const state = new MirrorState();
    state.since = "1796649424337301460";
    for (let i = 0; i < 3; i++) state.set(`tree/a/${i}.txt`, entry({ etag: `e${i}` }));
    state.setKnownFolders(new Map([["tree/a", { digest, files: 3 }]]));
    saveState(root, state);
    const text = await Deno.readTextFile(`${dir.path}/.ferry/state`);
    assert.ok(
      text.indexOf("\nknown ") < text.indexOf("\ttree/a/0.txt"),
      "the digests come before the entries",
    );

    const file = StateFile.open(root)!;
    const head = readStateHead(file)!;
    assert.equal(head.since, "1796649424337301460");
    assert.deepEqual([...head.knownFolders], [["tree/a", { digest, files: 3 }]]);
    // Replaced meanwhile (another run): what is read next is still the version the head came from.
    saveState(root, new MirrorState());
    const whole = loadState(root, file);
    assert.equal(whole.size, 3);
    assert.deepEqual(whole.recordedFields("tree/a/2.txt"), { size: 4096, sha256: SHA, etag: "e2" });
    assert.deepEqual([...whole.knownFolders], [["tree/a", { digest, files: 3 }]]);
    assert.equal(whole.changed, false, "read as written: nothing to write");
    whole.close();

    // An older client's state, its digests last: no head to read alone, and read whole as before.
    const known = text.match(/^known .*\n/m)![0];
    await Deno.writeTextFile(`${dir.path}/.ferry/state`, text.replace(known, "") + known);
    const older = StateFile.open(root)!;
    assert.equal(readStateHead(older), null);
    const olderWhole = loadState(root, older);
    assert.equal(olderWhole.size, 3);
    assert.deepEqual([...olderWhole.knownFolders], [["tree/a", { digest, files: 3 }]]);
    assert.equal(olderWhole.changed, true, "worth writing once, with its digests first");
    saveState(root, olderWhole);
    olderWhole.close();
    const rewritten = StateFile.open(root)!;
    assert.deepEqual(readStateHead(rewritten)?.knownFolders, new Map([["tree/a", { digest, files: 3 }]]));
    rewritten.close();

    // A head longer than a piece read for it (some 200 KB here) is read to its end.
    const many = new Map(Array.from({ length: 4000 }, (_, i) => [`tree/folder ${i}`, { digest, files: 1 }]));
    state.setKnownFolders(many);
    saveState(root, state);
    const longer = StateFile.open(root)!;
    assert.deepEqual(readStateHead(longer)?.knownFolders, many);
    longer.close();
  } finally {
    root.close();
  }
});

Deno.test("state: a state file of several MiB is read back whole, every line of it, whichever piece it falls in", async () => {
  await using dir = await tempDir();
  const state = new MirrorState();
  const paths = Array.from(
    { length: 15_000 },
    (_, i) => `folder ${i % 37}/${"long name ".repeat(i % 9)}${i}.bin`,
  );
  for (const path of paths) state.set(path, entry());
  using root = LocalDir.open(dir.path);
  saveState(root, state);
  const later = new Date((WRITTEN + 1) * 1000);
  await Deno.utime(`${dir.path}/.ferry/state`, later, later);
  assert.ok((await Deno.stat(`${dir.path}/.ferry/state`)).size > 2 * 1024 * 1024, "more than two pieces");
  const loaded = loadState(root);
  assert.equal(loaded.size, paths.length);
  for (const path of paths) assert.deepEqual(loaded.trusted(path, seen()), entry(), path);
});

/** `text` in pieces of whole lines of at most a MB, as `loadState` reads a file. */
function inPieces(text: string): string[] {
  const pieces = [];
  for (let start = 0; start < text.length;) {
    let end = text.lastIndexOf("\n", start + 1_000_000) + 1;
    if (end <= start) end = text.length;
    pieces.push(text.slice(start, end));
    start = end;
  }
  return pieces;
}

/** The unnamed files (O_TMPFILE) this process holds open in `dir`'s state folder, and their sizes. */
function setAsideIn(dir: string): number[] {
  const prefix = `${Deno.realPathSync(dir)}/.ferry/#`;
  const sizes = [];
  for (const { name } of Deno.readDirSync("/proc/self/fd")) {
    let target;
    try {
      target = Deno.readLinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // the fd of the listing itself, closed meanwhile
    }
    if (target.startsWith(prefix) && target.endsWith(" (deleted)")) {
      sizes.push(Deno.statSync(`/proc/self/fd/${name}`).size);
    }
  }
  return sizes;
}

for (const setAside of [false, true]) {
  const how = setAside ? ", with the lines recorded set aside in a file" : "";
  Deno.test(`state: an entry recorded in a run is looked up at once, can be replaced or forgotten, and is written once, as last recorded${how}`, () => {
    const dir = Deno.makeTempDirSync();
    const root = LocalDir.open(dir);
    using state = new MirrorState(WRITTEN);
    if (setAside) state.spillInto(root);
    // About 140 characters a line: two full pieces of the text, and a third. One path is not ASCII: its
    // piece is read back as text, the first as bytes.
    const paths = Array.from(
      { length: 18_000 },
      (_, i) => `folder ${i % 10}/${i === 10_000 ? "fïchier" : "file"} ${i}.bin`,
    );
    for (const path of paths) state.set(path, entry());
    for (const path of [paths[0], paths[6_000], paths.at(-1)!]) {
      assert.deepEqual(state.trusted(path, seen()), entry(), `${path}, before anything is written`);
    }
    const newer = entry({
      key: "4097:1234:1700000000.123456789:1799999999.500000000",
      etag: "fedcba9876543210fedcba9876543210",
    });
    state.set(paths[5], newer);
    state.set(paths[5], newer);
    state.delete(paths[7]);
    assert.equal(state.trusted(paths[5], seen()), undefined, "the identity it had no longer vouches for it");
    assert.deepEqual(state.trusted(paths[5], seen(newer.key)), newer);
    assert.equal(state.trusted(paths[7], seen()), undefined, "forgotten");
    const aside = setAsideIn(dir);
    if (setAside) {
      assert.equal(aside.length, 1, "one unnamed file in .ferry/");
      assert.ok(
        aside[0] > 1_000_000,
        `a full piece of lines (about a MiB) went there, not ${aside[0]} bytes`,
      );
    } else assert.deepEqual(aside, []);
    const text = state.format();
    assert.equal(
      text.split("\n").filter((line) => line.endsWith(`\t${paths[5]}`)).length,
      1,
      "one line per path",
    );
    const loaded = MirrorState.parse(inPieces(text), WRITTEN);
    assert.equal(loaded.size, paths.length - 1);
    assert.deepEqual(loaded.trusted(paths[5], seen(newer.key)), newer);
    for (const path of paths.filter((_, i) => i !== 5 && i !== 7)) {
      assert.deepEqual(loaded.trusted(path, seen()), entry(), path);
    }
    state.close();
    assert.deepEqual(setAsideIn(dir), [], "the file goes with the state");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), setAside ? [".ferry"] : []);
    root.close();
    Deno.removeSync(dir, { recursive: true });
  });
}

/** `{path: [status, bytes]}` of a run's --json lines. */
function outcomes(r: ClientResult): Record<string, [string, number]> {
  return Object.fromEntries(jsonLines(r).map((l) => [l.path, [l.status, l.bytes]]));
}

Deno.test("mirror: a file changed in place with its size and mtime put back is fetched again; an untouched one is not read", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/edited.txt`, "the server's bytes\n");
    await Deno.writeTextFile(`${src}/replaced.txt`, "the server's other bytes\n");
    await Deno.writeTextFile(`${src}/kept.txt`, "left alone\n");
    const first = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(first.code, 0, first.stderr);

    // Same size, same mtime: only ctime (in place) or the inode (replaced) tells.
    const edited = await Deno.stat(`${out}/edited.txt`);
    await Deno.writeTextFile(`${out}/edited.txt`, "THE SERVER'S BYTES\n");
    await Deno.utime(`${out}/edited.txt`, edited.atime!, edited.mtime!);
    const replaced = await Deno.stat(`${out}/replaced.txt`);
    await Deno.writeTextFile(`${out}/replaced.new`, "THE SERVER'S OTHER BYTES\n");
    await Deno.utime(`${out}/replaced.new`, replaced.atime!, replaced.mtime!);
    await Deno.rename(`${out}/replaced.new`, `${out}/replaced.txt`);

    const second = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(outcomes(second), {
      "edited.txt": ["updated", 19],
      "replaced.txt": ["updated", 25],
      "kept.txt": ["unchanged", 0],
    });
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

Deno.test("mirror: folders the state recorded are taken as they are, yet a file added to one, removed from it or left half-written in it is seen", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/d/e`, { recursive: true });
    for (let i = 0; i < 5; i++) await Deno.writeTextFile(`${src}/d/f${i}.txt`, `file ${i}\n`);
    await Deno.writeTextFile(`${src}/d/e/deep.txt`, "deep\n");
    await Deno.writeTextFile(`${src}/top.txt`, "top\n");
    // The first run records the folders it made; the second, LOCAL_DIR, which the first's state changed.
    for (let run = 0; run < 2; run++) assert.equal((await runClient(["mirror", address, ".", out])).code, 0);
    const recorded = (await Deno.readTextFile(`${out}/.ferry/state`)).split("\n").filter((l) =>
      l.startsWith("dir ")
    );
    assert.deepEqual(
      recorded.map((l) => l.split("\t")[2]).sort(),
      [".", "d", "d/e"],
      "every folder recorded",
    );

    await Deno.writeTextFile(`${out}/d/extra.txt`, "not on the server\n");
    await Deno.remove(`${out}/d/f1.txt`);
    await Deno.writeTextFile(`${out}/d/e/.gone.txt.ferry-0123.part`, "a part of a file no longer listed");
    const r = await runClient(["mirror", address, ".", out, "--delete", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const results = outcomes(r);
    assert.deepEqual(results["d/f1.txt"], ["updated", 7]);
    assert.deepEqual(results["d/extra.txt"][0], "deleted");
    assert.deepEqual(results["d/f0.txt"], ["unchanged", 0]);
    assert.deepEqual(await treeOf(out), await treeOf(src));
    await assert.rejects(Deno.lstat(`${out}/d/e/.gone.txt.ferry-0123.part`), Deno.errors.NotFound);
  });
});

Deno.test("mirror: a recorded folder the run did not change is recorded again as it was, unless an entry of it was forgotten: a file the server dropped, kept here, is still found by --delete", async () => {
  await withServer(async ({ src, out, address }) => {
    for (const folder of ["a", "b"]) {
      await Deno.mkdir(`${src}/${folder}`);
      for (const name of ["1.txt", "2.txt"]) {
        await Deno.writeTextFile(`${src}/${folder}/${name}`, `${folder}/${name}\n`);
      }
    }
    for (let run = 0; run < 2; run++) assert.equal((await runClient(["mirror", address, ".", out])).code, 0);
    // LOCAL_DIR itself holds no file here: no run looks at it, so none records it.
    const recordedFolders = async () =>
      (await Deno.readTextFile(`${out}/.ferry/state`)).split("\n").filter((l) => l.startsWith("dir "))
        .map((l) => l.split("\t")[2]).filter((folder) => folder !== ".").sort();
    assert.deepEqual(await recordedFolders(), ["a", "b"]);

    // The server changes a/ and drops b/2.txt: without --delete, the copy keeps b/2.txt, and its state
    // forgets it, while b/ itself does not change here.
    await Deno.writeTextFile(`${src}/a/1.txt`, "changed, and longer\n");
    await Deno.remove(`${src}/b/2.txt`);
    const kept = await runClient(["mirror", address, ".", out]);
    assert.equal(kept.code, 0, kept.stderr);
    assert.equal(await Deno.readTextFile(`${out}/b/2.txt`), "b/2.txt\n");
    assert.deepEqual(await recordedFolders(), ["a"], "b/ holds a file the state no longer has");

    const deleted = await runClient(["mirror", address, ".", out, "--delete"]);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

Deno.test("mirror without --json, which makes no report of a current file, still finds a file changed in place in a folder as recorded", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/d`);
    for (let i = 0; i < 20; i++) await Deno.writeTextFile(`${src}/d/f${i}.txt`, `file ${i}\n`);
    assert.equal((await runClient(["mirror", address, ".", out])).code, 0);
    // Written in place: the folder keeps its identity, so the run judges its files by lstat and the state.
    await Deno.writeTextFile(`${out}/d/f3.txt`, "FILE 3\n");
    const r = await runClient(["mirror", address, ".", out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /mirror done: 1 updated, 19 unchanged, 0 deleted, 0 failed/);
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

Deno.test("mirror without --json that finds every folder as recorded keeps every file's line in the state", async () => {
  await withServer(async ({ src, out, address }) => {
    for (const folder of ["d", "d/e", "f"]) {
      await Deno.mkdir(`${src}/${folder}`);
      for (let i = 0; i < 5; i++) await Deno.writeTextFile(`${src}/${folder}/f${i}.txt`, `${folder} ${i}\n`);
    }
    await Deno.writeTextFile(`${src}/top.txt`, "top\n");
    assert.equal((await runClient(["mirror", address, ".", out, "--delete"])).code, 0);
    // The state's files' lines (a later run may add folders' lines, once they are settled).
    const fileLines = async () =>
      (await Deno.readTextFile(`${out}/.ferry/state`)).split("\n").filter((line) =>
        /\t[0-9a-f]{64}\t/.test(line)
      );
    const recorded = await fileLines();
    assert.equal(recorded.length, 16);
    // Its folders are all as recorded: their files are kept as a whole, not one by one, and stay in the state.
    for (let run = 0; run < 2; run++) {
      const r = await runClient(["mirror", address, ".", out, "--delete"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /mirror done: 0 updated, 16 unchanged, 0 deleted, 0 failed/);
      assert.deepEqual(await fileLines(), recorded);
    }
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

Deno.test("mirror: files added to a folder since its first lines were written are read with the others: a run where nothing changed fetches none, a change in place is found", async () => {
  await withServer(async ({ src, out, address }) => {
    for (const folder of ["d", "e"]) {
      await Deno.mkdir(`${src}/${folder}`);
      for (let i = 0; i < 10; i++) await Deno.writeTextFile(`${src}/${folder}/f${i}.txt`, `${folder} ${i}\n`);
    }
    const mirror = async (summary: RegExp) => {
      const r = await runClient(["mirror", address, ".", out, "--delete"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, summary);
    };
    await mirror(/mirror done: 20 updated/);
    // Added later, one before d's other names and one after: their lines follow e's in the state.
    for (const name of ["a0.txt", "zz.txt"]) await Deno.writeTextFile(`${src}/d/${name}`, `${name}\n`);
    await mirror(/mirror done: 2 updated, 20 unchanged/);
    const paths = (await Deno.readTextFile(`${out}/.ferry/state`)).split("\n")
      .filter((line) => /\t[0-9a-f]{64}\t/.test(line)).map((line) => line.slice(line.lastIndexOf("\t") + 1));
    assert.deepEqual(paths.slice(-3), ["e/f9.txt", "d/a0.txt", "d/zz.txt"], "d's lines are not together");
    for (let run = 0; run < 2; run++) {
      await mirror(/mirror done: 0 updated, 22 unchanged, 0 deleted, 0 failed/);
    }
    await Deno.writeTextFile(`${out}/d/a0.txt`, "A0.TXT\n"); // in place: d keeps its identity
    await mirror(/mirror done: 1 updated, 21 unchanged, 0 deleted, 0 failed/);
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});

Deno.test("mirror: a state that is deleted, truncated, foreign or wrong costs hashing or fetching, never a wrong tree", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/d`);
    for (let i = 0; i < 20; i++) await Deno.writeTextFile(`${src}/d/f${i}.txt`, `file ${i}\n`.repeat(i + 1));
    const first = await runClient(["mirror", address, ".", out]);
    assert.equal(first.code, 0, first.stderr);
    const state = `${out}/.ferry/state`;
    const good = await Deno.readTextFile(state);
    // A copy of the tree elsewhere: its state names other inodes.
    const other = `${out}-other`;
    assert.equal((await runClient(["mirror", address, ".", other])).code, 0);
    const foreign = await Deno.readTextFile(`${other}/.ferry/state`);
    await Deno.remove(other, { recursive: true });

    const damages: [string, () => Promise<void>][] = [
      ["deleted", () => Deno.remove(state)],
      ["truncated", () => Deno.writeTextFile(state, good.slice(0, good.length / 2))],
      ["foreign", () => Deno.writeTextFile(state, foreign)],
      [
        "wrong hashes",
        () => Deno.writeTextFile(state, good.replace(/\t[0-9a-f]{64}\t/g, `\t${"0".repeat(64)}\t`)),
      ],
      ["a directory", async () => {
        await Deno.remove(state);
        await Deno.mkdir(state);
      }],
    ];
    for (const [what, damage] of damages) {
      // A hash recorded wrongly makes its file look changed: it is fetched again, which is all it costs.
      const refetches = what === "wrong hashes";
      // A local file changed behind the state's back, besides the damage: it must be put right.
      await Deno.writeTextFile(`${out}/d/f3.txt`, "changed locally\n");
      await damage();
      const r = await runClient(["mirror", address, ".", out, "--json"]);
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      // A state that cannot be written is said, and costs the next run some hashing: not a failure.
      if (what === "a directory") assert.match(r.stderr, /^ferry: cannot write .*\.ferry\/state: /m);
      const results = outcomes(r);
      assert.deepEqual(results["d/f3.txt"][0], "updated", what);
      const fetched = Object.entries(results).filter(([path, [status]]) =>
        path !== "d/f3.txt" && status !== "unchanged"
      );
      if (!refetches) assert.deepEqual(fetched, [], `${what}: nothing else is fetched`);
      assert.deepEqual(await treeOf(out), await treeOf(src), what);
    }
  });
});

Deno.test("mirror --checksum hashes every file: a copy the state vouches for wrongly is found and fetched again", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "the server's bytes\n");
    await Deno.writeTextFile(`${src}/b.txt`, "other bytes\n");
    assert.equal((await runClient(["mirror", address, ".", out])).code, 0);
    // The copy changes, and the state is made to vouch for the changed copy (as a disk fault, or a tool
    // that rewrote both, could leave them): only hashing can tell.
    await Deno.writeTextFile(`${out}/a.txt`, "THE SERVER'S BYTES\n");
    const dirFd = openRead(out, { directory: true });
    const changed = identityAt(dirFd, "a.txt")!.key;
    close(dirFd);
    const state = `${out}/.ferry/state`;
    const text = await Deno.readTextFile(state);
    const recorded = text.split("\n").find((line) => line.endsWith("\ta.txt"))!.split("\t")[0];
    await Deno.writeTextFile(state, text.replace(recorded, changed));
    const later = new Date(Date.now() + 10_000); // written well after the change: not racy
    await Deno.utime(state, later, later);

    const trusting = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(trusting.code, 0, trusting.stderr);
    assert.deepEqual(
      outcomes(trusting)["a.txt"],
      ["unchanged", 0],
      "without --checksum, the state is trusted",
    );
    const checked = await runClient(["mirror", address, ".", out, "--json", "--checksum"]);
    assert.equal(checked.code, 0, checked.stderr);
    assert.deepEqual(outcomes(checked), { "a.txt": ["updated", 19], "b.txt": ["unchanged", 0] });
    assert.deepEqual(await treeOf(out), await treeOf(src));
  });
});
