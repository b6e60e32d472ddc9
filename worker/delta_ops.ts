/**
 * The server's side of delta transfer (PROTOCOL.md "Delta transfer"): `sig` answers a file version's
 * signature, computed once per version by the worker's {@link SignatureCache}, and a `get` with `ranges`
 * sends those byte ranges of one version, straight from the file with sendfile(2), followed by the whole
 * file's SHA-256. What the server does per client does not depend on what the client holds.
 *
 * @module
 */

import { FramedFileBody } from "./bodies.ts";
import { close } from "../ffi/libc.ts";
import {
  DATA_FRAME_PAYLOAD,
  END_FRAME,
  ErrorCode,
  FRAME_HEADER_SIZE,
  putDataFrameHeader,
  type Request,
} from "../framing.ts";
import { etagOf, identityOf } from "./hash_cache.ts";
import {
  afterData,
  Deferred,
  fileChanged,
  getFields,
  header,
  openFile,
  type OpenGet,
  type Piece,
  refusal,
  type Reply,
  type ReplyContext,
  unchangedAnswer,
} from "./operations.ts";
import type { Signed } from "./signature_cache.ts";

/** Answers `sig`: a Header with the signature's length, the signature in Data frames, the end frame. */
export function sig(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const path = request.path!;
  const ifNoneMatch = request.ifNoneMatch;
  const reply: Reply = {
    label: `SIG ${JSON.stringify(path)}${ifNoneMatch === undefined ? "" : " ifNoneMatch"}`,
    pieces: [],
    files: [],
  };
  const opened = openFile(ctx, path);
  if (!("fd" in opened)) return refusal(reply.label, opened);
  const { fd, stat: fileStat } = opened;
  reply.files.push(fd);
  const identity = identityOf(fileStat);
  const fields = {
    size: fileStat.size,
    mtimeNs: String(fileStat.mtimeNs),
    mode: fileStat.mode & 0o7777,
    etag: etagOf(identity),
  };
  let signed: Signed | null | undefined;
  let asked = false;
  // With ifNoneMatch, the SHA-256 first (cached, or one read shared with every other request for it): an
  // unchanged file, the common case, costs no signature.
  let sha: string | null | undefined;
  let hashAsked = false;
  reply.pieces.push(
    new Deferred(() => {
      if (ifNoneMatch !== undefined) {
        if (!hashAsked) {
          hashAsked = true;
          ctx.hashes.request(identity, fd, fileStat.size, JSON.stringify(path), (result) => {
            sha = result;
            ctx.wake();
          });
        }
        if (sha === undefined) return null;
        if (sha === null) return [fileChanged(path)];
        if (sha === ifNoneMatch) {
          reply.result = "unchanged";
          return [unchangedAnswer({ ...fields, sha256: sha, unchanged: true })];
        }
      }
      if (!asked) {
        asked = true;
        ctx.signatures.request(identity, fd, fileStat.size, JSON.stringify(path), (result) => {
          signed = result;
          ctx.wake();
        });
      }
      if (signed === undefined) return null;
      if (signed === null) return [fileChanged(path)];
      const bytes = signed.signature;
      const pieces: Piece[] = [
        header({ ...fields, sha256: signed.sha256, signatureLength: bytes.byteLength }),
      ];
      for (let at = 0; at < bytes.byteLength; at += DATA_FRAME_PAYLOAD) {
        const length = Math.min(DATA_FRAME_PAYLOAD, bytes.byteLength - at);
        const frameHeader = new Uint8Array(FRAME_HEADER_SIZE + 1);
        putDataFrameHeader(frameHeader, length);
        pieces.push(frameHeader, bytes.subarray(at, at + length));
      }
      pieces.push(END_FRAME);
      return pieces;
    }),
  );
  return reply;
}

/**
 * Answers a `get` with `ranges`: a Header, the ranges' bytes concatenated in Data frames, then the
 * version's SHA-256 (in the Header if known, else a Trailer) and the end frame. The version must be the
 * one `ifMatch` names (else CHANGED), and every range must lie within it (else BAD_REQUEST).
 */
export function rangedGet(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const path = request.path!;
  const ranges = request.ranges!;
  let total = 0;
  for (const [, length] of ranges) total += length;
  const label = `GET ${JSON.stringify(path)} ranges=${ranges.length} length=${total}`;
  const opened = openFile(ctx, path);
  if (!("fd" in opened)) return refusal(label, opened);
  const { fd, stat: fileStat } = opened;
  const identity = identityOf(fileStat);
  const file: OpenGet = { ctx, path, offset: 0, fd, fileStat, identity, etag: etagOf(identity) };
  if (request.ifMatch !== file.etag) {
    close(fd);
    return refusal(label, {
      code: ErrorCode.Changed,
      message: `${JSON.stringify(path)} is no longer the version of etag ${request.ifMatch}: start again`,
    });
  }
  const [lastOffset, lastLength] = ranges[ranges.length - 1];
  if (lastOffset + lastLength > fileStat.size) {
    close(fd);
    return refusal(label, {
      code: ErrorCode.BadRequest,
      message: `range [${lastOffset}, ${lastLength}] ends past the end of the file (${fileStat.size} bytes)`,
    });
  }
  const sha = ctx.hashes.get(identity);
  const pieces: Piece[] = [header({ ...getFields(file), sha256: sha })];
  for (const [offset, length] of ranges) pieces.push(new FramedFileBody(fd, offset, offset + length));
  pieces.push(afterData(file, sha)); // the version must still be the same after the last byte

  return { label, pieces, files: [fd] };
}
