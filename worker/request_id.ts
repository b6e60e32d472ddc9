/**
 * Request ids: every answer of a worker carries one (`requestId` in its Header or Error frame, PROTOCOL.md),
 * and its request log line says it, so that a client's error line leads to the server's line.
 *
 * An id is this worker process's prefix, 8 random base32 characters drawn when it starts (40 bits: workers
 * and their restarts do not share one in practice), a dash, and the process's request count in base 36:
 * `k3f9x2ab-1a`. Making one is an increment and a number formatted, no system call.
 *
 * The answers' bytes are mostly built before the id is known, and cached replies are shared by every
 * request for the same file, so the id is put in front of the Header's fields as the answer goes out
 * ({@link stampRequestId}): a small frame head of its own, then the built Header from its first field on.
 *
 * @module
 */

import { FileRangeBody } from "./bodies.ts";
import { FRAME_HEADER_SIZE, FrameType, getFrameLength, putFrameLength } from "../framing.ts";
import { Deferred, ErrorPiece, type Piece } from "./operations.ts";
import { REPLY_BUFFER_BYTES, returnReplyBuffer, takeReplyBuffer } from "./reply_pool.ts";

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

function randomPrefix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => BASE32[b & 31]).join("");
}

const prefix = `${randomPrefix()}-`;
let count = 0;

/**
 * A new request id. Also for an HTTP responder: the same id goes in its `X-Request-Id` header and its log line.
 */
export function nextRequestId(): string {
  return prefix + (++count).toString(36);
}

/** A body that writes its own Header frame (a listing) takes the id itself. */
export interface TakesRequestId {
  /** Puts `id` in the Header this body sends. */
  setRequestId(id: string): void;
}

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const encoder = new TextEncoder();

/**
 * The frame head and first field that replace the first `FRAME_HEADER_SIZE + 2` bytes (length, type,
 * `{`) of a Header or Error frame of `length` bytes whose JSON is not `{}` (`empty` false).
 */
function stampedHead(type: number, length: number, id: string, empty: boolean): Uint8Array {
  const field = encoder.encode(`{"requestId":${JSON.stringify(id)}${empty ? "" : ","}`);
  const head = new Uint8Array(FRAME_HEADER_SIZE + 1 + field.byteLength);
  putFrameLength(head, 0, length + field.byteLength - 1);
  head[FRAME_HEADER_SIZE] = type;
  head.set(field, FRAME_HEADER_SIZE + 1);
  return head;
}

function isJsonFrameStart(type: number, brace: number): boolean {
  return (type === FrameType.Header || type === FrameType.Error) && brace === OPEN_BRACE;
}

/**
 * The pieces of an answer with `id` in its first frame, if that is a Header or an Error frame; other
 * answers go unchanged. Bytes shared with other answers (cached replies) are never written to.
 */
export function stampRequestId(pieces: Piece[], id: string): Piece[] {
  const first = pieces[0];
  if (first === undefined) return pieces;
  let replacement: Piece[] | null = null;
  if (first instanceof ErrorPiece) {
    replacement = [new ErrorPiece({ ...first.body, requestId: id })];
  } else if (first instanceof Deferred) {
    replacement = [
      new Deferred(() => {
        const settled = first.settle();
        return settled === null ? null : stampRequestId(settled, id);
      }),
    ];
  } else if (first instanceof Uint8Array) {
    replacement = stampBytes(first, id);
  } else if (first instanceof FileRangeBody && first.headerLength > FRAME_HEADER_SIZE + 2) {
    // A cached reply in the memory file, whose pages a socket may still be sending: never written to.
    // The new frame head goes first, then the cached bytes from the Header's first field on.
    replacement = [
      stampedHead(FrameType.Header, first.headerLength - FRAME_HEADER_SIZE, id, false),
      new FileRangeBody(first.fd, first.start + FRAME_HEADER_SIZE + 2, first.end, first.release),
    ];
  } else if ("setRequestId" in first) {
    (first as TakesRequestId).setRequestId(id);
  }
  return replacement === null ? pieces : [...replacement, ...pieces.slice(1)];
}

/** `bytes` (an answer starting with a Header or Error frame) with `id` in that frame; null if it has none. */
function stampBytes(bytes: Uint8Array, id: string): Piece[] | null {
  const start = FRAME_HEADER_SIZE + 2;
  if (
    bytes.byteLength <= start || !isJsonFrameStart(bytes[FRAME_HEADER_SIZE], bytes[FRAME_HEADER_SIZE + 1])
  ) {
    return null;
  }
  const head = stampedHead(
    bytes[FRAME_HEADER_SIZE],
    getFrameLength(bytes, 0),
    id,
    bytes[start] === CLOSE_BRACE,
  );
  const rest = bytes.subarray(start);
  const total = head.byteLength + rest.byteLength;
  if (total > REPLY_BUFFER_BYTES) return [head, rest];
  // Joined in one buffer, so that a whole small reply still goes out in one send(2).
  const joined = takeReplyBuffer().subarray(0, total);
  joined.set(head);
  joined.set(rest, head.byteLength);
  returnReplyBuffer(bytes); // a pooled buffer is this answer's alone, and copied now
  return [joined];
}
