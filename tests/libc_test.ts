/**
 * The libc layer's own promises: `struct stat` decoded from its layout agrees with what Deno reports for the
 * same file, and a failed call says which call, which errno and on what.
 */

import assert from "node:assert/strict";
import {
  close,
  closeInBackground,
  coarseClockNow,
  coarseClockTick,
  errnoDescription,
  errnoName,
  errnoNamesOfNode,
  fstat,
  getdents,
  identityAt,
  LibcError,
  lstatAt,
  mkdirAt,
  OPEN,
  openAt,
  openRead,
  renameOver,
  statAt,
  statWordsAt,
} from "../ffi/libc.ts";
import { decodeStatVersion, direntsOf, nameText } from "../ffi/structs.ts";
import { PAGE_SIZE, pageAlignedBuffer } from "../ffi/page_aligned.ts";
import { tempDir } from "./helpers.ts";

// libc binds each symbol on first use and keeps it, which the test sanitizer counts as a leak: getdents is
// bound here, before the tests.
{
  const fd = openAt(undefined, ".", OPEN.O_RDONLY | OPEN.O_DIRECTORY);
  getdents(fd, new Uint8Array(4096));
  close(fd);
}

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
{
  const fd = openRead(".", { directory: true });
  fstat(fd);
  assert.throws(() => statAt(fd, "no such file"), LibcError);
  assert.throws(() => statWordsAt(fd, "no such file"), LibcError);
  assert.throws(() => lstatAt(fd, "no such file"), LibcError);
  assert.throws(() => renameOver(fd, "no such part", fd, "no such file"), LibcError);
  assert.throws(() => mkdirAt(fd, "."), LibcError);
  close(fd);
  coarseClockTick();
  coarseClockNow();
}
await closeInBackground(openRead(".", { directory: true }));

Deno.test("fstat and statAt decode struct stat as Deno's own stat sees the file", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/f`;
  await Deno.writeFile(path, new Uint8Array(12345));
  await Deno.chmod(path, 0o640);
  await Deno.utime(path, 1_700_000_000, new Date(1_600_000_000_123)); // mtime with milliseconds
  const expected = await Deno.stat(path);
  const rootFd = openRead(dir.path, { directory: true });
  const fd = openRead("f", { beneath: rootFd });
  try {
    for (const st of [fstat(fd), statAt(rootFd, "f")]) {
      assert.equal(st.size, 12345);
      assert.equal(st.mode, expected.mode);
      assert.equal(st.mode & 0o7777, 0o640);
      assert.equal(st.ino, BigInt(expected.ino!));
      assert.equal(st.dev, BigInt(expected.dev));
      assert.equal(st.blocks, expected.blocks);
      assert.equal(st.mtimeNs, 1_600_000_000_123_000_000n);
      assert.ok(st.isFile);
    }
    assert.equal(fstat(rootFd).isFile, false, "a directory");
  } finally {
    close(fd);
    close(rootFd);
  }
});

Deno.test("the coarse clock's tick, which stamps files' times, is one of the kernel's: 1 to 10 ms", () => {
  const tick = coarseClockTick();
  assert.ok(tick >= 0.001 && tick <= 0.01, `a tick of ${tick} s`);
});

Deno.test("the coarse clock is never ahead of the time a file changed after it is read is stamped with", async () => {
  await using dir = await tempDir();
  for (let i = 0; i < 20; i++) {
    const before = coarseClockNow();
    Deno.writeFileSync(`${dir.path}/f`, new Uint8Array([i]));
    const fd = openRead(dir.path, { directory: true });
    try {
      const key = identityAt(fd, "f")!.key;
      const ctime = Number(key.slice(key.lastIndexOf(":") + 1));
      assert.ok(ctime >= before, `stamped ${ctime}, the coarse clock read ${before} before`);
    } finally {
      close(fd);
    }
  }
});

Deno.test("a name reaches the kernel as its UTF-8 bytes, ASCII or not; one of 4,096 bytes or more is ENAMETOOLONG", async () => {
  await using dir = await tempDir();
  const names = ["plain.txt", "caf\u00e9.txt", "\u65e5\u672c.txt", "smile-\u{1F600}", "a\u00e9b-then-ascii"];
  for (const name of names) Deno.writeFileSync(`${dir.path}/${name}`, new TextEncoder().encode(name));
  const fd = openRead(dir.path, { directory: true });
  try {
    for (const name of names) {
      const identity = identityAt(fd, name);
      assert.equal(identity?.size, new TextEncoder().encode(name).length, name);
    }
    assert.equal(identityAt(fd, "caf\u00e8.txt"), null, "another accent is another name");
    // 4,096 bytes reach the kernel, which refuses them (PATH_MAX counts the NUL); more do not fit the buffer.
    for (const long of ["x".repeat(4096), "\u00e9".repeat(2048)]) {
      assert.throws(() => identityAt(fd, long), /fstatat: ENAMETOOLONG \(File name too long\)/);
    }
    for (const long of ["x".repeat(4097), "\u00e9".repeat(2049)]) {
      assert.throws(() => identityAt(fd, long), /fstatat: ENAMETOOLONG .*more than 4096 bytes/);
    }
    // A path whose last character does not fit whole is not cut before it: what is left of it (4,094 bytes:
    // twenty folders of 200 bytes, then a file) names a file that is there.
    const folders = Array.from({ length: 20 }, (_, i) => `${i}`.padEnd(200, "x"));
    let at = fd;
    for (const folder of folders) {
      mkdirAt(at, folder);
      const inner = openAt(at, folder, OPEN.O_RDONLY | OPEN.O_DIRECTORY);
      if (at !== fd) close(at);
      at = inner;
    }
    const cutTo = "ab" + "\u20ac".repeat(24);
    close(openAt(at, cutTo, OPEN.O_WRONLY | OPEN.O_CREAT, { mode: 0o644 }));
    close(at);
    const deep = `${folders.join("/")}/${cutTo}`;
    assert.equal(new TextEncoder().encode(deep).length, 4094);
    assert.equal(identityAt(fd, deep)?.isFile, true);
    assert.throws(() => identityAt(fd, `${deep}\u{1F600}`), /fstatat: ENAMETOOLONG .*more than 4096 bytes/);
  } finally {
    close(fd);
  }
});

Deno.test("a failed open names the call, the errno and the path", async () => {
  await using dir = await tempDir();
  const rootFd = openRead(dir.path, { directory: true });
  try {
    assert.throws(
      () => openRead("missing/file", { beneath: rootFd }),
      (e) =>
        e instanceof LibcError && e.errnoName === "ENOENT" &&
        e.message === 'openat2: ENOENT (No such file or directory) opening "missing/file"',
    );
    assert.throws(
      () => openRead("../outside", { beneath: rootFd }),
      /openat2: EXDEV .* opening "\.\.\/outside"/,
    );
    assert.throws(
      () => statAt(rootFd, "gone"),
      /fstatat: ENOENT .* of "gone"/,
    );
    assert.throws(
      () => openRead("x".repeat(5000), { beneath: rootFd }),
      /openat2: ENAMETOOLONG .*4096 bytes/,
    );
  } finally {
    close(rootFd);
  }
});

Deno.test("before glibc 2.32, errno names come from Node's table: it names every errno it has as glibc does, those ferry acts on included", () => {
  const fromNode = errnoNamesOfNode();
  for (const [code, name] of fromNode) assert.equal(name, errnoName(code), `errno ${code}`);
  const actedOn = ["EBADF", "ECONNABORTED", "EDQUOT", "EEXIST", "ELOOP", "EMFILE", "ENAMETOOLONG", "ENFILE"];
  actedOn.push("ENOENT", "ENOSPC", "EROFS", "EXDEV", "EAGAIN", "EINTR", "EACCES", "EISDIR", "ENOTDIR");
  const named = new Set(fromNode.values());
  assert.deepEqual(actedOn.filter((name) => !named.has(name)), []);
  assert.equal(errnoDescription(28), "No space left on device");
});

Deno.test("getdents reads a folder's names as Deno's readDir does, by its system call", async () => {
  await using dir = await tempDir();
  const names = ["a", "b.txt", "\u00e9t\u00e9", "x".repeat(255)];
  for (const name of names) await Deno.writeTextFile(`${dir.path}/${name}`, name);
  const fd = openAt(undefined, dir.path, OPEN.O_RDONLY | OPEN.O_DIRECTORY);
  const seen: string[] = [];
  try {
    const buf = new Uint8Array(4096);
    for (let n = getdents(fd, buf); n > 0; n = getdents(fd, buf)) {
      for (const entry of direntsOf(buf, n)) seen.push(nameText(entry.name));
    }
  } finally {
    close(fd);
  }
  const expected = [];
  for await (const entry of Deno.readDir(dir.path)) expected.push(entry.name);
  assert.deepEqual(seen.sort(), expected.sort());
});

/**
 * What this process holds open inside the folder `dir` (by the links of /proc/self/fd): the files of other
 * tests, which run in the same process, are elsewhere.
 */
function heldInside(dir: string): string[] {
  const inside = `${Deno.realPathSync(dir)}/`, held: string[] = [];
  for (const { name } of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${name}`);
      if (target.startsWith(inside)) held.push(target);
    } catch { /* closed meanwhile */ }
  }
  return held;
}

Deno.test("renameOver puts the new file at the name, over a file, a symlink (not followed) or nothing, and lets go of what it replaced", async () => {
  await using dir = await tempDir();
  const at = (name: string) => `${dir.path}/${name}`;
  await Deno.writeTextFile(at("a"), "old");
  await Deno.writeTextFile(at("target"), "the symlink's target");
  await Deno.symlink("target", at("link"));
  for (const name of ["a", "link", "none"]) await Deno.writeTextFile(at(`.${name}.part`), `new ${name}`);
  const dirFd = openRead(dir.path, { directory: true });
  try {
    for (const name of ["a", "link", "none"]) await renameOver(dirFd, `.${name}.part`, dirFd, name);
    for (const name of ["a", "link", "none"]) {
      assert.equal((await Deno.lstat(at(name))).isFile, true, name);
      assert.equal(await Deno.readTextFile(at(name)), `new ${name}`);
    }
    assert.equal(await Deno.readTextFile(at("target")), "the symlink's target");
    assert.deepEqual([...Deno.readDirSync(dir.path)].map((e) => e.name).sort(), [
      "a",
      "link",
      "none",
      "target",
    ]);
    // A rename that fails leaves the name as it was, and holds nothing open.
    assert.throws(() => renameOver(dirFd, ".missing.part", dirFd, "a"), /renameat.*ENOENT/);
    assert.equal(await Deno.readTextFile(at("a")), "new a");
    assert.deepEqual(heldInside(dir.path), [], "every file replaced was let go of");
  } finally {
    close(dirFd);
  }
});

Deno.test("renameOver renames a batch in one loop, the files past the 64 it holds at once freed by the rename itself, and lets go of every one", async () => {
  await using dir = await tempDir();
  const count = 200;
  for (let i = 0; i < count; i++) {
    await Deno.writeTextFile(`${dir.path}/f${i}`, "old");
    await Deno.writeTextFile(`${dir.path}/.f${i}.part`, `new ${i}`);
  }
  const dirFd = openRead(dir.path, { directory: true });
  try {
    // One loop, no turn of the event loop: no close is reported done before it ends, so past the 64th
    // rename, renameOver holds nothing (the rename frees what it replaces, as renameAt does).
    const released = Array.from(
      { length: count },
      (_, i) => renameOver(dirFd, `.f${i}.part`, dirFd, `f${i}`),
    );
    const during = heldInside(dir.path).length;
    assert.ok(during <= 64, `${during} replaced files held after the loop`);
    await Promise.all(released);
    assert.deepEqual(heldInside(dir.path), [], "every file replaced was let go of");
    for (let i = 0; i < count; i++) assert.equal(await Deno.readTextFile(`${dir.path}/f${i}`), `new ${i}`);
  } finally {
    close(dirFd);
  }
});

Deno.test("openAt with a mode opens an existing file without O_CREAT too (the mode is for creating only)", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/f`, "x");
  const rootFd = openRead(dir.path, { directory: true });
  try {
    for (const flags of [OPEN.O_RDWR, OPEN.O_RDWR | OPEN.O_CREAT]) {
      const fd = openAt(rootFd, "f", flags, { mode: 0o644, noSymlinks: true });
      assert.equal(fstat(fd).size, 1);
      close(fd);
    }
  } finally {
    close(rootFd);
  }
});

Deno.test("a stat decoded as a StatVersion gives the numbers lstat's bigints print as, for times before, at and after 1970", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(`${dir.path}/f`, new Uint8Array(777));
  const rootFd = openRead(dir.path, { directory: true });
  try {
    // Seconds and milliseconds: at the epoch, a second before it, and a time of these years.
    for (const mtimeMs of [1_700_000_000_123, 0, 5, -1_000, -1_500_000_000_250]) {
      await Deno.utime(`${dir.path}/f`, 0, new Date(mtimeMs));
      const expected = lstatAt(rootFd, "f");
      const version = decodeStatVersion(statWordsAt(rootFd, "f"));
      assert.deepEqual(version, {
        isFile: true,
        size: 777,
        mode: expected.mode,
        dev: String(expected.dev),
        ino: String(expected.ino),
        mtimeNs: String(expected.mtimeNs),
      }, `mtime ${mtimeMs} ms`);
      assert.equal(version.mtimeNs, String(BigInt(mtimeMs) * 1_000_000n));
    }
  } finally {
    close(rootFd);
  }
});

Deno.test("a file's identity finds its key's text where a state line holds it, and nothing else", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(`${dir.path}/f`, new Uint8Array(1234));
  const rootFd = openRead(dir.path, { directory: true });
  try {
    // A time of these years, the epoch, and one before it (past 2^53 as the unsigned number decoded).
    for (const mtimeMs of [1_700_000_000_123, 0, -1_500_000_000_250]) {
      await Deno.utime(`${dir.path}/f`, 0, new Date(mtimeMs));
      const identity = identityAt(rootFd, "f")!;
      const key = identity.key;
      assert.equal(identityAt(rootFd, "f")!.keyEndIn(`${key}\tsha`, 0), key.length, `mtime ${mtimeMs} ms`);
      assert.equal(identityAt(rootFd, "f")!.keyEndIn(`line\n${key}\t`, 5), 5 + key.length);
      const [size, ino, mtime, ctime] = key.split(":");
      const others = [
        `0${key}`, // a leading zero
        key.slice(0, -1), // the last digit missing
        `${Number(size) + 1}:${ino}:${mtime}:${ctime}`,
        `${size}:${ino}1:${mtime}:${ctime}`,
        `${size}:${ino}:${mtime.replace(".", ".0")}:${ctime}`, // ten digits of nanoseconds
        `${size}:${ino}:${mtime}:${ctime.slice(0, -1)}${(Number(ctime.at(-1)) + 1) % 10}`,
        `${size}:${ino}:${mtime}.${ctime}`, // another separator
      ];
      for (const other of others) assert.equal(identity.keyEndIn(`${other}\t`, 0), -1, other);
    }
  } finally {
    close(rootFd);
  }
});

Deno.test("a page-aligned buffer starts at a page boundary and reads a file like any other buffer", async () => {
  await using dir = await tempDir();
  const content = crypto.getRandomValues(new Uint8Array(65536));
  await Deno.writeFile(`${dir.path}/f`, content);
  // Sizes on both sides of where glibc maps an ArrayBuffer on its own, 16 bytes past a page boundary (512
  // KiB and more in a fresh Deno process here), and classic mode's block of 256,000 bytes.
  for (const size of [1000, 65536, 256 * 1000, 1024 * 1024]) {
    const buffer = pageAlignedBuffer(size);
    assert.equal(buffer.byteLength, size);
    assert.equal(Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer))) % PAGE_SIZE, 0, `${size}`);
    using file = await Deno.open(`${dir.path}/f`);
    const n = (await file.read(buffer))!;
    assert.equal(n, Math.min(size, content.byteLength));
    assert.deepEqual(buffer.subarray(0, n), content.subarray(0, n));
  }
});
