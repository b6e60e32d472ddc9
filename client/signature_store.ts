/**
 * The signatures `mirror` keeps of its large files (PROTOCOL.md "Delta transfer"): when a file is built by
 * delta, the server's signature of the new version is the signature of the copy just published (its whole
 * SHA-256 was checked), so it is kept, as is the signature asked for of a file fetched whole
 * (`whole_signatures.ts`); the next delta of that file plans from it instead of cutting and hashing the
 * old copy (a read and two hashes of every byte of it, before the build reads it once more).
 *
 * One file per path, in LOCAL_DIR's state folder, under `signatures/` and a name made from the path (a
 * file's name cannot hold every path): the SHA-256 of the copy it describes, a line break, then the
 * signature as the server encoded it. A signature is only taken for a copy whose SHA-256 the state vouches
 * for (its `lstat` still matches what was recorded) and equals the one written with it. Anything else (a
 * file missing, damaged, of another copy) only costs a cut of the old copy, as before; and a signature
 * that was wrong anyway builds a file whose SHA-256 fails the check, which is then fetched whole.
 *
 * Not fsynced: a signature lost in a crash costs the next delta a cut.
 *
 * @module
 */

import { decodeSignature, maxSignatureLength, type Signature } from "../delta.ts";
import { C, close, fstat, mkdirAt, OPEN, openAt, pread, pwriteAll, unlinkAt } from "../ffi/libc.ts";
import { isSha256Hex } from "../framing.ts";
import { createSha256, loadHashing } from "../hashing.ts";
import { LocalDir } from "./local_tree.ts";
import { STATE_DIR } from "./mirror_state.ts";

/** The folder in STATE_DIR that holds the signatures. */
const SIGNATURES = "signatures";

/** Bytes of the SHA-256 line that starts each file: 64 hex digits and a line break. */
const SHA_LINE = 65;

/** The name of the signature file of `path` (relative to LOCAL_DIR): 32 hex digits of its SHA-256. */
function nameOf(path: string): string {
  return createSha256().update(path).digest("hex").slice(0, 32);
}

/** The signatures kept in LOCAL_DIR's state folder. */
export class SignatureStore {
  private constructor(readonly root: LocalDir) {}

  /** The store of LOCAL_DIR (`root`), once the hash that names its files is loaded. */
  static async open(root: LocalDir): Promise<SignatureStore> {
    await loadHashing();
    return new SignatureStore(root);
  }

  /**
   * The signature kept for `path`, if it describes a copy of SHA-256 `sha256` and `size` bytes; null
   * otherwise (none, another copy's, or unreadable). Never throws: a lost signature only costs a cut.
   */
  load(path: string, sha256: string, size: number): Signature | null {
    let fd: number | undefined;
    try {
      fd = openAt(this.root.fd, `${STATE_DIR}/${SIGNATURES}/${nameOf(path)}`, OPEN.O_RDONLY | C.O_NONBLOCK, {
        noSymlinks: true,
      });
      const stat = fstat(fd);
      if (!stat.isFile || stat.size <= SHA_LINE || stat.size > SHA_LINE + maxSignatureLength(size)) {
        return null;
      }
      const bytes = new Uint8Array(stat.size);
      for (let got = 0; got < bytes.length;) {
        const n = pread(fd, bytes.subarray(got), got);
        if (n <= 0) return null;
        got += n;
      }
      if (new TextDecoder().decode(bytes.subarray(0, SHA_LINE)) !== `${sha256}\n`) return null;
      return decodeSignature(bytes.subarray(SHA_LINE), size);
    } catch {
      return null;
    } finally {
      if (fd !== undefined) close(fd);
    }
  }

  /**
   * Keeps `signature` (as the server encoded it) for `path`, whose copy has SHA-256 `sha256`, in place of
   * what was kept for it. Never throws: a signature not kept only costs the next delta a cut.
   */
  save(path: string, sha256: string, signature: Uint8Array): void {
    if (!isSha256Hex(sha256)) return;
    try {
      using dir = this.#folder(true);
      const name = nameOf(path);
      dir.replaceFile(name, `${name}.tmp`, 0o600, (fd) => {
        pwriteAll(fd, new TextEncoder().encode(`${sha256}\n`), 0);
        pwriteAll(fd, signature, SHA_LINE);
      });
    } catch { /* only a shortcut */ }
  }

  /** Forgets the signature of `path` (the file was deleted, or replaced whole). Never throws. */
  forget(path: string): void {
    try {
      using dir = this.#folder(false);
      unlinkAt(dir.fd, nameOf(path));
    } catch { /* none kept */ }
  }

  /** STATE_DIR/signatures, made if missing when `make`; no symlink on the way is followed. Throws LibcError. */
  #folder(make: boolean): LocalDir {
    for (const [parent, name] of make ? [[".", STATE_DIR], [STATE_DIR, SIGNATURES]] : []) {
      try {
        const fd = openAt(this.root.fd, parent, OPEN.O_RDONLY | OPEN.O_DIRECTORY, { noSymlinks: true });
        try {
          mkdirAt(fd, name, 0o755);
        } finally {
          close(fd);
        }
      } catch { /* there already, or the open below says why not */ }
    }
    const fd = openAt(this.root.fd, `${STATE_DIR}/${SIGNATURES}`, OPEN.O_RDONLY | OPEN.O_DIRECTORY, {
      noSymlinks: true,
    });
    return LocalDir.adopt(fd, this.root.shownPath(`${STATE_DIR}/${SIGNATURES}`));
  }
}
