/**
 * Signed releases, the publisher's side: the manifest of a directory (every regular file's path, size and
 * SHA-256, a version that only grows, an expiry time), signed with an Ed25519 key in minisign's format
 * (`minisign.ts`). `client sign` writes it into the directory as two files the server serves like any
 * other, {@link MANIFEST_NAME} and {@link SIGNATURE_NAME}; `minisign -Vm .ferry-manifest.json -p KEY.pub`
 * checks it. The manifest's format:
 *
 * ```json
 * {"ferryManifest":1,"version":1796500000,"created":"2026-12-05T19:40:00.000Z",
 *  "expires":"2026-12-12T19:40:00.000Z","files":{"a/b.txt":{"size":12,"sha256":"…"}}}
 * ```
 *
 * Paths are relative to the manifest's folder, `/`-separated. The manifest lists neither itself nor its
 * signature, nor a mirror's state folder `.ferry/` at the top.
 *
 * @module
 */

import { join, relative } from "node:path";
import { createSha256, loadHashing } from "../hashing.ts";
import { isSha256Hex } from "../framing.ts";
import { STATE_DIR } from "./mirror_state.ts";
import { formatPublicKey, formatSecretKey, generateKeyPair, parseSecretKey, signData } from "./minisign.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** The manifest's file name, in the folder it signs. */
export const MANIFEST_NAME = ".ferry-manifest.json";
/** The signature's file name: minisign's default for the manifest. */
export const SIGNATURE_NAME = `${MANIFEST_NAME}.minisig`;
/** The format's version, the `ferryManifest` field. */
const FORMAT = 1;

/** What the manifest says of one file. */
export interface ManifestFile {
  /** Its size in bytes. */
  size: number;
  /** Its SHA-256, lower-case hex. */
  sha256: string;
}

/** A manifest, parsed and checked for shape. */
export interface Manifest {
  /** Only grows from one release to the next: a client refuses one lower than it has seen. */
  version: number;
  /** When it was signed (informative). */
  created: string;
  /** After this time a client refuses it (a release replayed forever). */
  expires: Date;
  /** Every file, by its path relative to the manifest's folder. */
  files: Map<string, ManifestFile>;
}

/** A manifest that cannot be used: one line saying why. */
export class ManifestError extends Error {
  /** @param message what was wrong */
  constructor(message: string) {
    super(message);
    this.name = "ManifestError";
  }
}

/** True for a relative `/`-separated path with no empty, `.` or `..` part and no NUL. */
export function isCleanPath(path: string): boolean {
  return path !== "" && !path.includes("\0") &&
    path.split("/").every((p) => p !== "" && p !== "." && p !== "..");
}

/** Parses and checks a manifest's bytes (after its signature was verified); `what` names it in messages. */
export function parseManifest(bytes: Uint8Array, what: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ManifestError(`${what} is not JSON: ${(e as Error).message}`);
  }
  const m = value as Record<string, unknown>;
  if (typeof m !== "object" || m === null || m.ferryManifest !== FORMAT) {
    throw new ManifestError(`${what} is not a ferry manifest of format ${FORMAT}`);
  }
  if (!Number.isSafeInteger(m.version) || (m.version as number) < 0) {
    throw new ManifestError(`${what}: version is not a whole number`);
  }
  const expires = new Date(typeof m.expires === "string" ? m.expires : NaN);
  if (Number.isNaN(expires.getTime())) throw new ManifestError(`${what}: expires is not a time`);
  if (typeof m.files !== "object" || m.files === null || Array.isArray(m.files)) {
    throw new ManifestError(`${what}: files is not an object`);
  }
  const files = new Map<string, ManifestFile>();
  for (const [path, entry] of Object.entries(m.files as Record<string, unknown>)) {
    const e = entry as Record<string, unknown>;
    if (
      !isCleanPath(path) || typeof e !== "object" || e === null || !Number.isSafeInteger(e.size) ||
      (e.size as number) < 0 || !isSha256Hex(e.sha256)
    ) {
      throw new ManifestError(`${what}: the entry of ${JSON.stringify(path)} is malformed`);
    }
    files.set(path, { size: e.size as number, sha256: e.sha256 as string });
  }
  return { version: m.version as number, created: String(m.created ?? ""), expires, files };
}

/** The manifest's bytes: one key per line for files, sorted, so that two releases diff well. */
export function formatManifest(m: Manifest): string {
  const paths = [...m.files.keys()].sort();
  const files = paths.map((p) => `    ${JSON.stringify(p)}: ${JSON.stringify(m.files.get(p))}`).join(",\n");
  return `{\n  "ferryManifest": ${FORMAT},\n  "version": ${m.version},\n  "created": ${
    JSON.stringify(m.created)
  },\n  "expires": ${JSON.stringify(m.expires.toISOString())},\n  "files": {\n${files}${
    paths.length > 0 ? "\n" : ""
  }  }\n}\n`;
}

/** SHA-256 and size of a file, read in chunks. */
async function hashFile(path: string): Promise<ManifestFile> {
  using file = await Deno.open(path);
  const hash = createSha256();
  const buf = pageAlignedBuffer(1024 * 1024);
  let size = 0;
  for (let n = await file.read(buf); n !== null; n = await file.read(buf)) {
    hash.update(buf.subarray(0, n));
    size += n;
  }
  return { size, sha256: hash.digest("hex") };
}

/**
 * Every file the server would serve below `dir`: regular files, and symlinks to regular files inside
 * `dir` (the server serves those, and no other symlink). Not the manifest, its signature, or `.ferry/`.
 * `onSkip` hears of each symlink left out.
 */
export async function manifestFiles(
  dir: string,
  onSkip: (message: string) => void,
): Promise<Map<string, ManifestFile>> {
  await loadHashing();
  const root = await Deno.realPath(dir);
  const files = new Map<string, ManifestFile>();
  const walk = async (rel: string): Promise<void> => {
    const entries = [];
    for await (const e of Deno.readDir(rel === "" ? root : join(root, rel))) entries.push(e);
    for (const e of entries.sort((a, b) => a.name < b.name ? -1 : 1)) {
      const path = rel === "" ? e.name : `${rel}/${e.name}`;
      if (rel === "" && [MANIFEST_NAME, SIGNATURE_NAME, STATE_DIR].includes(e.name)) continue;
      const full = join(root, path);
      if (e.isDirectory) await walk(path);
      else if (e.isFile) files.set(path, await hashFile(full));
      else if (e.isSymlink) {
        const target = await Deno.realPath(full).catch(() => null);
        const inside = target !== null && !relative(root, target).startsWith("..");
        if (inside && (await Deno.stat(target!)).isFile) files.set(path, await hashFile(full));
        else onSkip(`${path}: a symlink the server does not serve as a file: not in the manifest`);
      }
    }
  };
  await walk("");
  return files;
}

/** How to sign a directory. */
export interface SignOptions {
  /** The secret key file. */
  secretKeyFile: string;
  /** The version; default: one more than the manifest already there, and at least the time in seconds. */
  version?: number;
  /** How long the manifest is valid, in milliseconds (default 7 days). */
  validForMs?: number;
  /** Hears of what was left out (symlinks). */
  onNotice?: (message: string) => void;
}

/** 7 days: a client refuses a manifest that was not signed again within this time. */
export const DEFAULT_VALID_FOR_MS = 7 * 24 * 3600 * 1000;

/** Writes `text` to `dir/name` through a temporary file renamed over it, so a reader sees old or new whole. */
async function replaceFile(dir: string, name: string, text: string): Promise<void> {
  const temp = join(dir, `.${name}.ferry-sign.tmp`);
  await Deno.writeTextFile(temp, text, { mode: 0o644 });
  await Deno.rename(temp, join(dir, name));
}

/** The version of the manifest `dir` already has, unverified (the publisher's own file), or null. */
async function previousVersion(dir: string): Promise<number | null> {
  try {
    return parseManifest(await Deno.readFile(join(dir, MANIFEST_NAME)), MANIFEST_NAME).version;
  } catch {
    return null;
  }
}

/**
 * `client sign`: writes the signed manifest of `dir` into it. Returns the manifest written. Throws
 * ManifestError or SignatureError for a bad key or version, and Deno's errors for unreadable files.
 */
export async function signDirectory(dir: string, options: SignOptions): Promise<Manifest> {
  await loadHashing(); // Ed25519 and BLAKE2b (minisign.ts)
  const key = parseSecretKey(await Deno.readTextFile(options.secretKeyFile), options.secretKeyFile);
  const previous = await previousVersion(dir);
  const now = new Date();
  const version = options.version ?? Math.max((previous ?? 0) + 1, Math.floor(now.getTime() / 1000));
  if (previous !== null && version <= previous) {
    throw new ManifestError(
      `--version ${version} is not above ${previous}, the version of the manifest already in ${dir}: ` +
        "clients that saw it would refuse the new one as a rollback",
    );
  }
  const manifest: Manifest = {
    version,
    created: now.toISOString(),
    expires: new Date(now.getTime() + (options.validForMs ?? DEFAULT_VALID_FOR_MS)),
    files: await manifestFiles(dir, options.onNotice ?? (() => {})),
  };
  const text = formatManifest(manifest);
  const signature = signData(
    new TextEncoder().encode(text),
    key,
    `timestamp:${Math.floor(now.getTime() / 1000)}\tfile:${MANIFEST_NAME}\tversion:${version}\thashed`,
  );
  // The signature first: between the two renames a client sees the old manifest with the new signature,
  // which it refuses (and tries again later), never a new manifest taken for signed by an old signature.
  await replaceFile(dir, SIGNATURE_NAME, signature);
  await replaceFile(dir, MANIFEST_NAME, text);
  return manifest;
}

/**
 * `client keygen`: writes a new key pair, the secret key unencrypted and readable by its owner only (as
 * `minisign -G -W` does). Refuses to overwrite either file. Returns the key id.
 */
export async function generateKeyFiles(publicKeyFile: string, secretKeyFile: string): Promise<string> {
  await loadHashing(); // Ed25519 and BLAKE2b (minisign.ts)
  const key = generateKeyPair();
  await Deno.writeTextFile(secretKeyFile, formatSecretKey(key), { createNew: true, mode: 0o600 });
  await Deno.writeTextFile(publicKeyFile, formatPublicKey(key), { createNew: true, mode: 0o644 });
  return key.id;
}

/** Parses a duration: a number with an optional unit s, m, h or d (seconds without one). */
export function parseDuration(text: string): number | null {
  const m = /^([0-9]+(?:\.[0-9]+)?)([smhd]?)$/.exec(text.trim());
  if (m === null) return null;
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2]]!;
  const ms = Number(m[1]) * unit * 1000;
  return ms > 0 && Number.isFinite(ms) ? ms : null;
}
