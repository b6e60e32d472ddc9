/**
 * Ed25519 keys and signatures in minisign's file formats (the ones signify's public keys and signatures
 * share), so that `minisign -V` checks what `client sign` signs and ferry checks what minisign signs:
 *
 * - public key: `untrusted comment: ...` then base64(`Ed` || key id (8 bytes) || public key (32 bytes));
 * - secret key: `untrusted comment: ...` then base64(`Ed` || kdf || `B2` || salt (32) || opslimit (8) ||
 *   memlimit (8) || key id (8) || seed and public key (64) || checksum (32)); only unencrypted keys (kdf
 *   `\0\0`, as `minisign -G -W` writes them) are read: a password-protected one is refused with a message
 *   that says how to remove the password;
 * - signature: `untrusted comment: ...`, base64(`ED` || key id || signature of the BLAKE2b-512 of the
 *   file) (or the legacy `Ed`, a signature of the file itself), `trusted comment: ...`, and base64 of the
 *   global signature over the signature's 64 bytes followed by the trusted comment.
 *
 * Ed25519 and BLAKE2b-512 are node:crypto's, loaded by `loadHashing()` (hashing.ts), which callers await
 * first: a run that checks no signature does not pay for loading it.
 *
 * @module
 */

import type { KeyObject } from "node:crypto";
import { loadedCrypto } from "../hashing.ts";

/** A key or signature file that cannot be used, or a signature that does not check: one line saying why. */
export class SignatureError extends Error {
  /** @param message what was wrong */
  constructor(message: string) {
    super(message);
    this.name = "SignatureError";
  }
}

/** A public key: its 8-byte id and the Ed25519 key. */
export interface PublicKey {
  /** The key id, as minisign prints it (16 hex digits, the id read as a little-endian number). */
  id: string;
  /** The key id's 8 bytes, as stored. */
  idBytes: Uint8Array;
  /** The 32-byte Ed25519 public key. */
  key: Uint8Array;
}

/** A secret key, unencrypted. */
export interface SecretKey extends PublicKey {
  /** The 32-byte Ed25519 seed. */
  seed: Uint8Array;
}

/** A signature file's content, parsed and checked for shape (not yet verified). */
export interface SignatureFile {
  /** True for `ED` (the BLAKE2b-512 of the file is signed), false for legacy `Ed` (the file itself). */
  prehashed: boolean;
  /** The id of the key that made it, as minisign prints it. */
  keyId: string;
  /** The 64-byte signature. */
  signature: Uint8Array;
  /** The trusted comment (signed by the global signature). */
  trustedComment: string;
  /** The 64-byte signature over `signature` and the trusted comment. */
  globalSignature: Uint8Array;
}

const UNTRUSTED = "untrusted comment: ";
const TRUSTED = "trusted comment: ";
const ALG_LEGACY = "Ed";
const ALG_PREHASHED = "ED";
const KDF_NONE = "\0\0";
const KDF_SCRYPT = "Sc";
const CHECKSUM_ALG = "B2";
/** Bytes of a decoded public key, signature and secret key. */
const PUBLIC_KEY_BYTES = 2 + 8 + 32;
const SIGNATURE_BYTES = 2 + 8 + 64;
const SECRET_KEY_BYTES = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/** DER prefixes that wrap a raw Ed25519 seed (PKCS#8) and public key (SPKI) for node:crypto. */
const PKCS8_PREFIX = Uint8Array.from([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x70,
  0x04,
  0x22,
  0x04,
  0x20,
]);
const SPKI_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);

const ascii = (bytes: Uint8Array) => String.fromCharCode(...bytes);

/** The key id as minisign prints it: the 8 bytes read as a little-endian number, in upper-case hex. */
function keyIdText(idBytes: Uint8Array): string {
  return [...idBytes].reverse().map((b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
}

/** Strict base64 of exactly `length` bytes, or null. */
function decodeBase64(text: string, length: number): Uint8Array | null {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return null;
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return bytes.length === length ? bytes : null;
}

function encodeBase64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

/** The lines of a key or signature file, without line ends (minisign writes `\n`; `\r\n` is accepted). */
function linesOf(text: string): string[] {
  return text.split("\n").map((l) => l.replace(/\r$/, ""));
}

/** The base64 line after the untrusted comment; `what` names the file in messages. */
function payloadLine(text: string, what: string): string {
  const lines = linesOf(text);
  if (!lines[0].startsWith(UNTRUSTED)) {
    throw new SignatureError(`${what}: the first line is not "${UNTRUSTED}..."`);
  }
  if (lines.length < 2 || lines[1].trim() === "") {
    throw new SignatureError(`${what}: no key or signature line`);
  }
  return lines[1].trim();
}

/** Parses a public key file's text (or its base64 line alone, as `minisign -P` takes it). */
export function parsePublicKey(text: string, what: string): PublicKey {
  const line = text.startsWith(UNTRUSTED) ? payloadLine(text, what) : text.trim();
  const bytes = decodeBase64(line, PUBLIC_KEY_BYTES);
  if (bytes === null) {
    throw new SignatureError(`${what}: not a minisign public key (base64 of ${PUBLIC_KEY_BYTES} bytes)`);
  }
  if (ascii(bytes.subarray(0, 2)) !== ALG_LEGACY) {
    throw new SignatureError(
      `${what}: unsupported key algorithm ${JSON.stringify(ascii(bytes.subarray(0, 2)))}`,
    );
  }
  const idBytes = bytes.slice(2, 10);
  return { id: keyIdText(idBytes), idBytes, key: bytes.slice(10) };
}

/** Parses an unencrypted secret key file's text; an encrypted one is refused with how to decrypt it. */
export function parseSecretKey(text: string, what: string): SecretKey {
  const bytes = decodeBase64(payloadLine(text, what), SECRET_KEY_BYTES);
  if (bytes === null) {
    throw new SignatureError(`${what}: not a minisign secret key (base64 of ${SECRET_KEY_BYTES} bytes)`);
  }
  const alg = ascii(bytes.subarray(0, 2));
  const kdf = ascii(bytes.subarray(2, 4));
  const checksum = ascii(bytes.subarray(4, 6));
  if (alg !== ALG_LEGACY || checksum !== CHECKSUM_ALG) {
    throw new SignatureError(`${what}: unsupported secret key algorithms ${JSON.stringify(alg + checksum)}`);
  }
  if (kdf === KDF_SCRYPT) {
    throw new SignatureError(
      `${what} is protected by a password, which ferry does not read: remove it with 'minisign -C -W -s FILE' ` +
        "(and keep the file private), or make a key with 'client keygen' or 'minisign -G -W'",
    );
  }
  if (kdf !== KDF_NONE) {
    throw new SignatureError(`${what}: unsupported key derivation ${JSON.stringify(kdf)}`);
  }
  const idBytes = bytes.slice(54, 62);
  const seed = bytes.slice(62, 94);
  const key = bytes.slice(94, 126);
  const derived = publicKeyOfSeed(seed);
  if (!equalBytes(derived, key)) {
    throw new SignatureError(`${what}: its public half does not match its seed (corrupt)`);
  }
  return { id: keyIdText(idBytes), idBytes, key, seed };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** `parts` joined (node's Buffer.concat, copied out of its shared pool). */
function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

function privateKeyObject(seed: Uint8Array): KeyObject {
  return loadedCrypto().createPrivateKey({
    key: Buffer.from(concat(PKCS8_PREFIX, seed)),
    format: "der",
    type: "pkcs8",
  });
}

function publicKeyObject(key: Uint8Array): KeyObject {
  return loadedCrypto().createPublicKey({
    key: Buffer.from(concat(SPKI_PREFIX, key)),
    format: "der",
    type: "spki",
  });
}

function publicKeyOfSeed(seed: Uint8Array): Uint8Array {
  const spki = loadedCrypto().createPublicKey(privateKeyObject(seed)).export({ format: "der", type: "spki" });
  return new Uint8Array(spki.subarray(SPKI_PREFIX.length));
}

/** A new key pair with a random key id. */
export function generateKeyPair(): SecretKey {
  const seed = new Uint8Array(loadedCrypto().randomBytes(32));
  const idBytes = new Uint8Array(loadedCrypto().randomBytes(8));
  return { id: keyIdText(idBytes), idBytes, key: publicKeyOfSeed(seed), seed };
}

/** A public key file's text, as minisign writes it. */
export function formatPublicKey(key: PublicKey): string {
  const bytes = concat(new TextEncoder().encode(ALG_LEGACY), key.idBytes, key.key);
  return `${UNTRUSTED}minisign public key ${key.id}\n${encodeBase64(bytes)}\n`;
}

/**
 * An unencrypted secret key file's text, as `minisign -G -W` writes it (its checksum left zero, as
 * minisign leaves it for an unencrypted key: only a password's decryption checks it).
 */
export function formatSecretKey(key: SecretKey): string {
  const bytes = new Uint8Array(SECRET_KEY_BYTES);
  bytes.set(new TextEncoder().encode(ALG_LEGACY + KDF_NONE + CHECKSUM_ALG), 0);
  bytes.set(key.idBytes, 54);
  bytes.set(key.seed, 62);
  bytes.set(key.key, 94);
  return `${UNTRUSTED}minisign secret key ${key.id} (unencrypted)\n${encodeBase64(bytes)}\n`;
}

const blake2b512 = (data: Uint8Array) =>
  new Uint8Array(loadedCrypto().createHash("blake2b512").update(data).digest());

/**
 * Signs `data` (prehashed with BLAKE2b-512, as minisign does by default); returns the signature file's
 * text. `trustedComment` must be one printable line.
 */
export function signData(data: Uint8Array, key: SecretKey, trustedComment: string): string {
  if (/[\r\n]/.test(trustedComment)) throw new SignatureError("the trusted comment must be one line");
  const privateKey = privateKeyObject(key.seed);
  const signature = new Uint8Array(loadedCrypto().sign(null, blake2b512(data), privateKey));
  const global = new Uint8Array(
    loadedCrypto().sign(null, concat(signature, new TextEncoder().encode(trustedComment)), privateKey),
  );
  const sigLine = encodeBase64(concat(new TextEncoder().encode(ALG_PREHASHED), key.idBytes, signature));
  return `${UNTRUSTED}signature from ferry secret key ${key.id}\n${sigLine}\n${TRUSTED}${trustedComment}\n` +
    `${encodeBase64(global)}\n`;
}

/** Parses a signature file's text (its shape only: {@link verifySignature} checks it). */
export function parseSignature(text: string, what: string): SignatureFile {
  const lines = linesOf(text);
  const sig = decodeBase64(payloadLine(text, what), SIGNATURE_BYTES);
  if (sig === null) {
    throw new SignatureError(`${what}: not a minisign signature (base64 of ${SIGNATURE_BYTES} bytes)`);
  }
  const alg = ascii(sig.subarray(0, 2));
  if (alg !== ALG_PREHASHED && alg !== ALG_LEGACY) {
    throw new SignatureError(`${what}: unsupported signature algorithm ${JSON.stringify(alg)}`);
  }
  if (lines.length < 4 || !lines[2].startsWith(TRUSTED)) {
    throw new SignatureError(`${what}: no "${TRUSTED}..." line`);
  }
  // The comment is the line as it is, without its line end (as minisign reads it).
  const trustedComment = lines[2].slice(TRUSTED.length);
  const globalSignature = decodeBase64(lines[3].trim(), 64);
  if (globalSignature === null) {
    throw new SignatureError(`${what}: the global signature is not base64 of 64 bytes`);
  }
  return {
    prehashed: alg === ALG_PREHASHED,
    keyId: keyIdText(sig.subarray(2, 10)),
    signature: sig.slice(10),
    trustedComment,
    globalSignature,
  };
}

/**
 * Verifies that `signatureText` signs `data` with one of `trusted`; returns the key that did and the
 * trusted comment. Throws SignatureError naming what failed: an unknown key, the file's signature, or the
 * trusted comment's.
 */
export function verifySignature(
  data: Uint8Array,
  signatureText: string,
  trusted: readonly PublicKey[],
  what: string,
): { key: PublicKey; trustedComment: string } {
  const parsed = parseSignature(signatureText, what);
  const key = trusted.find((k) => k.id === parsed.keyId);
  if (key === undefined) {
    throw new SignatureError(
      `${what}: made by key ${parsed.keyId}, which is not a trusted key (trusted: ${
        trusted.map((k) => k.id).join(", ")
      })`,
    );
  }
  const publicKey = publicKeyObject(key.key);
  const message = parsed.prehashed ? blake2b512(data) : data;
  if (!loadedCrypto().verify(null, message, publicKey, parsed.signature)) {
    throw new SignatureError(
      `${what}: the signature does not verify with key ${key.id} (the signed file was altered)`,
    );
  }
  const comment = new TextEncoder().encode(parsed.trustedComment);
  if (!loadedCrypto().verify(null, concat(parsed.signature, comment), publicKey, parsed.globalSignature)) {
    throw new SignatureError(`${what}: the trusted comment's signature does not verify with key ${key.id}`);
  }
  return { key, trustedComment: parsed.trustedComment };
}
