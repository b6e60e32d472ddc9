/**
 * Signed releases, the client's side (`get` and `mirror` with `--trust-key`): before any file, the signed
 * manifest (`manifest.ts`) is fetched and checked, and a run goes on only if
 *
 * - its signature verifies with one of the trusted keys (an unknown key, an altered manifest: refused);
 * - it has not expired (a release replayed forever, "freeze": refused);
 * - its version is not lower than the highest this client has seen for it (rollback: refused), the
 *   versions seen being kept in a small JSON file ({@link VersionStore});
 *
 * and then every file is checked against the manifest's size and SHA-256 rather than the server's word
 * (`fetch_file.ts`, `tree_fetch.ts`). Each refusal is exit 7 (verification failed) with one line naming it.
 *
 * The manifest is looked for in the folder asked for (PATH's for `get`, REMOTE_DIR for `mirror`), then in
 * each folder above it up to the served root, unless `--manifest` names it.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { classify, ClientError, ExitCode, ServerRefusal, usageError } from "./failure.ts";
import { pwriteAll } from "../ffi/libc.ts";
import type { LocalDir } from "./local_tree.ts";
import { ErrorCode, PROTOCOL_VERSION } from "../framing.ts";
import { type Manifest, MANIFEST_NAME, ManifestError, type ManifestFile, parseManifest } from "./manifest.ts";
import { loadHashing } from "../hashing.ts";
import { parsePublicKey, type PublicKey, SignatureError, verifySignature } from "./minisign.ts";
import { withRetries } from "./retry.ts";
import type { Deadline } from "./deadline.ts";
import type { Session } from "./session.ts";

/** How to check a release. */
export interface TrustOptions {
  /** The keys a manifest may be signed by (more than one while a key is being replaced). */
  keys: PublicKey[];
  /** The manifest's path on the server; default: looked for from the folder asked for upwards. */
  manifestPath?: string;
  /** Where the versions seen are kept. */
  versions: VersionStore;
  /** Do not record the version (a dry run changes nothing). */
  readOnly?: boolean;
}

/** What a fetch of the manifest needs of the run. */
export interface FetchContext {
  /** Retries after the first try. */
  retries: number;
  /** No retry starts later than this after the first try, in milliseconds. */
  retryMaxTimeMs?: number;
  /** The run's deadline. */
  deadline: Deadline;
}

/** A manifest whose signature, expiry and version were checked. */
export class Release {
  /**
   * @param manifest the manifest
   * @param path its path on the server
   * @param keyId the trusted key that signed it
   * @param manifestBytes the manifest as verified, byte for byte
   * @param signatureBytes its signature file, byte for byte
   */
  constructor(
    readonly manifest: Manifest,
    readonly path: string,
    readonly keyId: string,
    readonly manifestBytes: Uint8Array,
    readonly signatureBytes: Uint8Array,
  ) {}

  /** The folder on the server the manifest signs (`""` for the root). */
  get base(): string {
    const dir = dirname(this.path);
    return dir === "." ? "" : dir;
  }

  /** How messages name it: its path and version. */
  get shown(): string {
    return `the signed manifest ${JSON.stringify(this.path)} (version ${this.manifest.version})`;
  }

  /** `remotePath` relative to the manifest's folder, or null if it is not below it. */
  relativeOf(remotePath: string): string | null {
    if (this.base === "") return remotePath;
    return remotePath.startsWith(`${this.base}/`) ? remotePath.slice(this.base.length + 1) : null;
  }

  /** What the manifest says of `remotePath` (a path on the server), or undefined if it is not in it. */
  fileOf(remotePath: string): ManifestFile | undefined {
    const rel = this.relativeOf(remotePath);
    return rel === null ? undefined : this.manifest.files.get(rel);
  }

  /** True for the manifest and its signature themselves. */
  isOwnFile(remotePath: string): boolean {
    return remotePath === this.path || remotePath === `${this.path}.minisig`;
  }

  /** The refusal of a file the manifest does not list. */
  notListed(remotePath: string): ClientError {
    return new ClientError(ExitCode.Verification, `${JSON.stringify(remotePath)} is not in ${this.shown}`);
  }
}

/** A refusal: exit 7, one line. */
function refused(message: string): ClientError {
  return new ClientError(ExitCode.Verification, message);
}

/** Largest manifest accepted, so that a server cannot make the client hold endless data. */
const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;
/** Largest signature file accepted (minisign's are a few hundred bytes; a trusted comment up to 8 KiB). */
const MAX_SIGNATURE_BYTES = 64 * 1024;

/**
 * Fetches a small file (at most `limit` bytes) whole into memory; throws ServerRefusal (e.g. NOT_FOUND)
 * as the server said.
 */
async function fetchBytes(
  session: Session,
  path: string,
  limit: number,
  context: FetchContext,
): Promise<Uint8Array> {
  return await withRetries(async () => {
    const header = await session.begin({ v: PROTOCOL_VERSION, op: "get", path }, JSON.stringify(path));
    const size = header.size ?? -1;
    if (!Number.isSafeInteger(size) || size < 0 || size > limit) {
      throw refused(`${JSON.stringify(path)} announces ${size} bytes: more than the ${limit} accepted`);
    }
    const bytes = new Uint8Array(size);
    let got = 0;
    await session.readBody(size, (chunk) => {
      bytes.set(chunk, got);
      got += chunk.byteLength;
      return Promise.resolve();
    });
    if (got !== size) {
      throw refused(`${JSON.stringify(path)}: received ${got} bytes, the server announced ${size}`);
    }
    return bytes;
  }, {
    retries: context.retries,
    maxTimeMs: context.retryMaxTimeMs,
    signal: context.deadline.signal,
    verdict: (e) => classify(e),
  });
}

/** The manifest paths to try, from the folder `dir` up to the served root. */
function candidates(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir === "." ? "" : dir;; d = dirname(d) === "." ? "" : dirname(d)) {
    out.push(d === "" ? MANIFEST_NAME : `${d}/${MANIFEST_NAME}`);
    if (d === "") return out;
  }
}

/**
 * Fetches the manifest that covers the folder `dir` on the server, with its signature, and checks them
 * (signature, expiry, version); records its version as seen. Throws a ClientError (exit 7 for a refusal).
 */
export async function fetchRelease(
  session: Session,
  dir: string,
  trust: TrustOptions,
  context: FetchContext,
): Promise<Release> {
  const tried = trust.manifestPath !== undefined ? [trust.manifestPath] : candidates(dir);
  let path: string | undefined;
  let manifestBytes: Uint8Array | undefined;
  for (const candidate of tried) {
    try {
      manifestBytes = await fetchBytes(session, candidate, MAX_MANIFEST_BYTES, context);
      path = candidate;
      break;
    } catch (e) {
      if (e instanceof ServerRefusal && e.body.code === ErrorCode.NotFound) continue;
      throw context.deadline.expired ? context.deadline.error() : classify(e);
    }
  }
  if (path === undefined || manifestBytes === undefined) {
    throw refused(
      `no signed manifest on the server (looked for ${tried.map((p) => JSON.stringify(p)).join(", ")})`,
    );
  }
  const sigPath = `${path}.minisig`;
  let signatureBytes: Uint8Array;
  try {
    signatureBytes = await fetchBytes(session, sigPath, MAX_SIGNATURE_BYTES, context);
  } catch (e) {
    if (e instanceof ServerRefusal && e.body.code === ErrorCode.NotFound) {
      throw refused(`${JSON.stringify(path)} has no signature on the server (${JSON.stringify(sigPath)})`);
    }
    throw context.deadline.expired ? context.deadline.error() : classify(e);
  }
  return await checkRelease(path, manifestBytes, signatureBytes, trust);
}

/** Checks a manifest's signature, expiry and version, and records the version. */
export async function checkRelease(
  path: string,
  manifestBytes: Uint8Array,
  signatureBytes: Uint8Array,
  trust: TrustOptions,
  now = new Date(),
): Promise<Release> {
  const what = JSON.stringify(path);
  let keyId: string;
  let manifest: Manifest;
  await loadHashing(); // Ed25519 and BLAKE2b (minisign.ts)
  try {
    const signatureText = new TextDecoder().decode(signatureBytes);
    keyId = verifySignature(manifestBytes, signatureText, trust.keys, `the signature of ${what}`).key.id;
    manifest = parseManifest(manifestBytes, what);
  } catch (e) {
    if (e instanceof SignatureError || e instanceof ManifestError) throw refused(e.message);
    throw e;
  }
  const release = new Release(manifest, path, keyId, manifestBytes, signatureBytes);
  if (manifest.expires.getTime() <= now.getTime()) {
    throw refused(
      `${release.shown} expired at ${manifest.expires.toISOString()}: the server may be replaying an old ` +
        "release (the publisher must sign it again)",
    );
  }
  const seen = await trust.versions.seen(path);
  if (seen !== undefined && manifest.version < seen) {
    throw refused(
      `${release.shown} is older than version ${seen}, the highest seen (kept in ${trust.versions.file}): ` +
        "refusing a rollback",
    );
  }
  if (!trust.readOnly && (seen === undefined || manifest.version > seen)) {
    await trust.versions.record(path, manifest.version);
  }
  return release;
}

/**
 * The highest manifest version seen, by manifest path, in a JSON file: `{"versions":{"PATH":N}}`. A file
 * that cannot be read or parsed is an error (exit 8), never an empty store: that would let a rollback by.
 */
export class VersionStore {
  #versions: Record<string, number> | null = null;

  /** @param file the JSON file; its folder is made when the first version is recorded */
  constructor(readonly file: string) {}

  async #load(): Promise<Record<string, number>> {
    if (this.#versions !== null) return this.#versions;
    let text: string;
    try {
      text = await Deno.readTextFile(this.file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return this.#versions = {};
      throw new ClientError(
        ExitCode.LocalIo,
        `cannot read the versions seen, ${this.file}: ${(e as Error).message}`,
      );
    }
    try {
      const parsed = JSON.parse(text).versions as Record<string, unknown>;
      if (typeof parsed !== "object" || parsed === null) throw new Error("no versions object");
      for (const v of Object.values(parsed)) {
        if (!Number.isSafeInteger(v)) throw new Error("a version is not a number");
      }
      return this.#versions = parsed as Record<string, number>;
    } catch (e) {
      throw new ClientError(
        ExitCode.LocalIo,
        `${this.file} (the versions seen) is corrupt: ${(e as Error).message}; remove it to start afresh`,
      );
    }
  }

  /** The highest version seen of the manifest at `path`, if any. */
  async seen(path: string): Promise<number | undefined> {
    return (await this.#load())[path];
  }

  /** Records `version` as seen for `path`: a temporary file renamed over the store. */
  async record(path: string, version: number): Promise<void> {
    const versions = { ...await this.#load(), [path]: version };
    const temp = `${this.file}.tmp`;
    try {
      await Deno.mkdir(dirname(this.file), { recursive: true, mode: 0o755 });
      await Deno.remove(temp).catch(() => {});
      await Deno.writeTextFile(temp, `${JSON.stringify({ versions }, null, 2)}\n`, {
        createNew: true,
        mode: 0o644,
      });
      await Deno.rename(temp, this.file);
    } catch (e) {
      throw new ClientError(ExitCode.LocalIo, `cannot write ${this.file}: ${(e as Error).message}`);
    }
    this.#versions = versions;
  }
}

/** Where `get` keeps the versions seen when `--state-dir` is not given; null when no home is known. */
export function defaultStateDir(): string | null {
  const xdg = Deno.env.get("XDG_STATE_HOME");
  if (xdg) return join(xdg, "ferry");
  const home = Deno.env.get("HOME");
  return home ? join(home, ".local", "state", "ferry") : null;
}

/** The file of versions seen in a state folder. */
export const VERSIONS_FILE = "manifest-versions.json";

/** The first few of a list, for a one-line message. */
function firstOf(items: string[]): string {
  const shown = items.slice(0, 3).map((p) => JSON.stringify(p)).join(", ");
  return `${items.length} (${shown}${items.length > 3 ? ", ..." : ""})`;
}

/**
 * `mirror`: checks a listing of `remoteDir` against the manifest before anything is fetched: every listed
 * file must be in it, with its size (and, when the listing has one, its SHA-256), and every file it lists
 * below `remoteDir` must be listed. Returns the entries to mirror, each with the manifest's size and
 * SHA-256, without the manifest and its signature. Throws a ClientError (exit 7) naming the first few of
 * each kind of difference; malformed entries are passed on (the mirror reports them).
 */
export function checkTreeAgainst(release: Release, remoteDir: string, values: unknown[]): unknown[] {
  const notListed: string[] = [];
  const unlike: string[] = [];
  const seen = new Set<string>();
  const out: unknown[] = [];
  for (const value of values) {
    const entry = value as Record<string, unknown> | null;
    if (typeof entry !== "object" || entry === null || typeof entry.path !== "string") {
      out.push(value);
      continue;
    }
    const path = entry.path;
    if (release.isOwnFile(path)) continue;
    const signed = release.fileOf(path);
    if (signed === undefined) {
      notListed.push(path);
      continue;
    }
    seen.add(path);
    if (entry.size !== signed.size || (entry.sha256 !== undefined && entry.sha256 !== signed.sha256)) {
      unlike.push(path);
      continue;
    }
    out.push({ ...entry, size: signed.size, sha256: signed.sha256 });
  }
  const prefix = remoteDir === "" ? "" : `${remoteDir}/`;
  const missing: string[] = [];
  for (const rel of release.manifest.files.keys()) {
    const path = release.base === "" ? rel : `${release.base}/${rel}`;
    if (path.startsWith(prefix) && !seen.has(path)) missing.push(path);
  }
  if (notListed.length + unlike.length + missing.length === 0) return out;
  const why = [
    notListed.length > 0 ? `${firstOf(notListed)} not in it` : "",
    unlike.length > 0 ? `${firstOf(unlike)} of another size or SHA-256` : "",
    missing.length > 0 ? `${firstOf(missing)} of it missing on the server` : "",
  ].filter((w) => w !== "").join(", ");
  throw refused(`the server's tree is not ${release.shown}: ${why}; nothing was fetched or deleted`);
}

/**
 * Writes the manifest and signature that were verified into LOCAL_DIR (`root`), signature first, each
 * through a temporary file renamed over it. Throws LocalIoError.
 */
export function writeReleaseFiles(root: LocalDir, release: Release): void {
  const name = basename(release.path);
  for (
    const [file, bytes] of [[`${name}.minisig`, release.signatureBytes], [
      name,
      release.manifestBytes,
    ]] as const
  ) {
    root.replaceFile(file, `.${file}.ferry-release.tmp`, 0o644, (fd) => pwriteAll(fd, bytes, 0));
  }
}

/** Reads the `--trust-key` files. Throws a usage error (exit 2) for one that cannot be read or used. */
export function loadTrustedKeys(files: string[]): PublicKey[] {
  return files.map((file) => {
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch (e) {
      throw usageError(`--trust-key: cannot read ${file}: ${(e as Error).message}`);
    }
    try {
      return parsePublicKey(text, file);
    } catch (e) {
      throw usageError(`--trust-key: ${(e as Error).message}`);
    }
  });
}

/**
 * `get`: fetches and checks the manifest that covers `path` on the server; returns what it says of the
 * file. Throws a ClientError (exit 7) when the manifest is refused or does not list the file.
 */
export async function signedFileOf(
  session: Session,
  path: string,
  trust: TrustOptions,
  context: FetchContext,
): Promise<ManifestFile> {
  // The path as the server resolves it: no empty or `.` parts (one with `..` is in no manifest).
  const clean = path.split("/").filter((p) => p !== "" && p !== ".").join("/");
  const release = await fetchRelease(session, dirname(clean), trust, context);
  const signed = release.fileOf(clean);
  if (signed === undefined) throw release.notListed(path);
  return signed;
}
