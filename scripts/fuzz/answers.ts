/**
 * Reads what a server sends on one request-mode connection, as it arrives in pieces of any size, and checks
 * it against PROTOCOL.md: every frame has a length in range and a known type, control frames are JSON, each
 * answer is a Header or an Error followed by an end frame, and nothing follows an error that closes the
 * connection. Each answer is counted by its result (`ok` or the error code); the first departure from the
 * protocol is kept as the connection's anomaly. Data frames are counted, not kept.
 *
 * @module
 */

import {
  decodeJson,
  errorClosesConnection,
  FRAME_HEADER_SIZE,
  FrameType,
  getFrameLength,
  MAX_RESPONSE_FRAME,
} from "../../framing.ts";

const KNOWN_TYPES = new Set<number>([
  FrameType.Header,
  FrameType.Data,
  FrameType.Trailer,
  FrameType.Error,
  FrameType.Entries,
]);

/** A streaming checker of one connection's answers. */
export class AnswerReader {
  /** Answers by result (`ok`, `NOT_FOUND`, ...), shared by every reader of a run. */
  readonly #results: Map<string, number>;
  /** Whole answers read on this connection. */
  answers = 0;
  /** The result of each answer, in order (only the first 4 are kept). */
  readonly firstResults: string[] = [];
  /** Data bytes received (in Data frames). */
  dataBytes = 0;
  /** The first departure from the protocol, or null. */
  anomaly: string | null = null;
  /** True once an answer ended with an error after which the server closes. */
  closingError = false;

  readonly #header = new Uint8Array(FRAME_HEADER_SIZE);
  #headerFill = 0;
  /** Body bytes of the current frame still to come (-1: reading a header). */
  #remaining = -1;
  #type = -1;
  #json: Uint8Array | null = null;
  #jsonFill = 0;
  /** The current answer's frames so far: their type letters. */
  #frames = "";
  #errorCode: string | null = null;

  /** @param results where answers are counted by result */
  constructor(results: Map<string, number>) {
    this.#results = results;
  }

  /** True while an answer has begun and not ended. */
  get midAnswer(): boolean {
    return this.#frames !== "" || this.#headerFill > 0 || this.#remaining >= 0;
  }

  /** Takes the next bytes received. */
  feed(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.byteLength && this.anomaly === null) {
      if (this.#remaining < 0) {
        if (this.closingError) return this.#fail("bytes after an error that closes the connection");
        const n = Math.min(FRAME_HEADER_SIZE - this.#headerFill, bytes.byteLength - at);
        this.#header.set(bytes.subarray(at, at + n), this.#headerFill);
        this.#headerFill += n;
        at += n;
        if (this.#headerFill === FRAME_HEADER_SIZE) this.#startFrame(getFrameLength(this.#header, 0));
        continue;
      }
      if (this.#type === -1) {
        this.#type = bytes[at++];
        this.#remaining--;
        if (!KNOWN_TYPES.has(this.#type)) return this.#fail(`a frame of unknown type ${this.#type}`);
        if (this.#type !== FrameType.Data) {
          this.#json = new Uint8Array(this.#remaining);
          this.#jsonFill = 0;
        }
      } else {
        const n = Math.min(this.#remaining, bytes.byteLength - at);
        if (this.#json !== null) this.#json.set(bytes.subarray(at, at + n), this.#jsonFill);
        else this.dataBytes += n;
        this.#jsonFill += n;
        this.#remaining -= n;
        at += n;
      }
      if (this.#remaining === 0) this.#endFrame();
    }
  }

  #startFrame(length: number): void {
    this.#headerFill = 0;
    if (length < 0 || length > MAX_RESPONSE_FRAME) return this.#fail(`a frame of length ${length}`);
    if (length > 0) {
      this.#remaining = length;
      this.#type = -1;
      return;
    }
    if (this.#frames === "") return this.#fail("an end frame with no answer before it");
    const result = this.#errorCode ?? (this.#frames[0] === "H" ? "ok" : null);
    if (result === null) return this.#fail(`an answer of frames '${this.#frames}'`);
    this.#results.set(result, (this.#results.get(result) ?? 0) + 1);
    if (this.firstResults.length < 4) this.firstResults.push(result);
    this.answers++;
    this.closingError = this.#errorCode !== null && errorClosesConnection(this.#errorCode);
    this.#frames = "";
    this.#errorCode = null;
  }

  #endFrame(): void {
    const letter = String.fromCharCode(this.#type);
    this.#frames += letter;
    this.#remaining = -1;
    const json = this.#json;
    this.#json = null;
    if (json === null) return;
    let body: unknown;
    try {
      body = decodeJson(json);
    } catch {
      return this.#fail(`a '${letter}' frame whose body is not JSON`);
    }
    if (this.#type !== FrameType.Error) return;
    const code = (body as { code?: unknown } | null)?.code;
    if (typeof code !== "string") return this.#fail(`an Error frame without a code: ${JSON.stringify(body)}`);
    if (this.#errorCode !== null) return this.#fail("two Error frames in one answer");
    this.#errorCode = code;
  }

  #fail(what: string): void {
    this.anomaly ??= what;
  }
}
