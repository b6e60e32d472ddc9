/**
 * C struct layouts used by ferry on x86_64 Linux, written once: `sockaddr_in`, `sockaddr_in6`, `stat`,
 * `open_how`, the packed `epoll_event`, `msghdr`, `iovec` and `cmsghdr`. Layouts only: this module calls
 * nothing, so `libc.ts` can use it (socket addresses as text are `sockaddr.ts`'s).
 *
 * @module
 */

/** Offsets and sizes of `struct msghdr` (56 bytes), `struct iovec` (16) and `struct cmsghdr` (16 + data). */
export const MSGHDR = {
  size: 56,
  name: 0,
  namelen: 8,
  iov: 16,
  iovlen: 24,
  control: 32,
  controllen: 40,
  flags: 48,
} as const;

/** `struct iovec`: base pointer at 0, length at 8. */
export const IOVEC = { size: 16, base: 0, len: 8 } as const;

/** `struct cmsghdr` header and the CMSG_* sizes for one int of data. */
export const CMSG = {
  len: 0,
  level: 8,
  type: 12,
  data: 16,
  /** CMSG_LEN(0): the header before the fds. */
  lenNoData: 16,
  SCM_RIGHTS: 1,
} as const;

/** CMSG_LEN for `count` fds. */
export function cmsgLenFds(count: number): number {
  return CMSG.lenNoData + 4 * count;
}

/** CMSG_SPACE for `count` fds (the length rounded up to 8). */
export function cmsgSpaceFds(count: number): number {
  return (cmsgLenFds(count) + 7) & ~7;
}

/** `struct epoll_event` is packed on x86_64: events u32 at 0, data u64 at 4. */
export const EPOLL_EVENT = { size: 12, events: 0, data: 4 } as const;

/**
 * `struct linux_dirent64`, as getdents64(2) fills a buffer with them: inode (u64) at 0, offset (i64) at 8,
 * record length (u16) at 16, type (u8) at 18, then the NUL-terminated name; records are 8-byte aligned.
 */
export const DIRENT64 = { ino: 0, off: 8, reclen: 16, type: 18, name: 19 } as const;

/** `d_type` values of {@link DIRENT64}: some file systems say DT_UNKNOWN and leave the type to a stat. */
export const DT = { UNKNOWN: 0, DIR: 4, REG: 8, LNK: 10 } as const;

/** One record of a getdents64(2) buffer: the raw name (a view into the buffer) and its `d_type`. */
export interface RawDirent {
  /** The name's bytes, without the NUL; valid until the buffer is refilled. */
  name: Uint8Array;
  /** One of {@link DT}, or another `d_type`. */
  type: number;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const lossyUtf8 = new TextDecoder("utf-8");

/**
 * A file name's text. Most names are ASCII, made into a string inside V8: a decoder call per name cost
 * more than the rest of listing its file but the lstat. A name that is not UTF-8 throws a TypeError, or
 * with `lossy` gets U+FFFD in place of what is not.
 */
export function nameText(name: Uint8Array, lossy = false): string {
  for (let i = 0; i < name.byteLength; i++) {
    if (name[i] > 0x7f) return (lossy ? lossyUtf8 : strictUtf8).decode(name);
  }
  return String.fromCharCode.apply(null, name as unknown as number[]); // a name is at most 255 bytes
}

/** The records of the first `length` bytes of a getdents64(2) buffer, `.` and `..` left out. */
export function* direntsOf(buf: Uint8Array, length: number): Generator<RawDirent> {
  for (let at = 0; at < length;) {
    const reclen = buf[at + DIRENT64.reclen] | buf[at + DIRENT64.reclen + 1] << 8;
    const start = at + DIRENT64.name;
    let end = start;
    while (end < at + reclen && buf[end] !== 0) end++;
    const name = buf.subarray(start, end);
    const dots = name.byteLength <= 2 && name.every((b) => b === 0x2e);
    if (!dots) yield { name, type: buf[at + DIRENT64.type] };
    at += reclen;
  }
}

/** `struct inotify_event` (16 bytes and its name): wd i32, mask u32, cookie u32, then the name's length u32. */
export const INOTIFY_EVENT = { size: 16, wd: 0, mask: 4, len: 12 } as const;

/**
 * The watch descriptor, mask and name of each event in the first `length` bytes of an inotify read(2): the
 * name of the file in the watched folder that the event is about (its bytes, a view into `buf`), empty for
 * an event about the folder itself.
 */
export function* inotifyEventsOf(
  buf: Uint8Array,
  length: number,
): Generator<{ wd: number; mask: number; name: Uint8Array }> {
  const view = new DataView(buf.buffer, buf.byteOffset, length);
  for (let at = 0; at + INOTIFY_EVENT.size <= length;) {
    const len = view.getUint32(at + INOTIFY_EVENT.len, true);
    const start = at + INOTIFY_EVENT.size;
    let end = start;
    while (end < start + len && buf[end] !== 0) end++; // the name is padded with NULs
    yield {
      wd: view.getInt32(at + INOTIFY_EVENT.wd, true),
      mask: view.getUint32(at + INOTIFY_EVENT.mask, true),
      name: buf.subarray(start, end),
    };
    at = start + len;
  }
}

/** Size of a buffer large enough for any socket address ferry handles (`sockaddr_in6`, 28 bytes). */
export const SOCKADDR_MAX = 28;

/** `struct sockaddr_in` (16 bytes): family u16 at 0, port u16 big-endian at 2, address at 4. */
export const SOCKADDR_IN = { size: 16, family: 0, port: 2, addr: 4, addrSize: 4 } as const;

/** `struct sockaddr_in6` (28 bytes): family u16 at 0, port u16 big-endian at 2, address at 8. */
export const SOCKADDR_IN6 = { size: 28, family: 0, port: 2, addr: 8, addrSize: 16 } as const;

/** `struct open_how` of openat2(2) (24 bytes): flags, mode and resolve, each a u64. */
export const OPEN_HOW = { size: 24, flags: 0, mode: 8, resolve: 16 } as const;

/** Fills an `open_how` held as three u64. */
export function encodeOpenHow(how: BigUint64Array, flags: number, mode: number, resolve: bigint): void {
  how[OPEN_HOW.flags / 8] = BigInt(flags);
  how[OPEN_HOW.mode / 8] = BigInt(mode);
  how[OPEN_HOW.resolve / 8] = resolve;
}

/** `struct stat` on x86_64 (144 bytes): the offsets of the fields ferry reads. */
export const STAT = {
  size: 144,
  st_dev: 0,
  st_ino: 8,
  st_nlink: 16,
  st_mode: 24,
  st_size: 48,
  st_blocks: 64,
  /** `struct timespec`: tv_sec, then tv_nsec. */
  st_mtim: 88,
  st_ctim: 104,
} as const;

/** What ferry needs of `struct stat`. */
export interface FileStat {
  /** Device and inode: together they name the file. */
  dev: bigint;
  /** Inode number. */
  ino: bigint;
  /** Hard links to the inode: more than one means the same bytes have another name, maybe elsewhere. */
  nlink: number;
  /** File type and permission bits. */
  mode: number;
  /** Size in bytes. */
  size: number;
  /** Storage it takes, in 512-byte blocks (less than its size says when it has holes). */
  blocks: number;
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs: bigint;
  /** Status change time in nanoseconds since the epoch: moves on any chmod, chown, link or rename too. */
  ctimeNs: bigint;
  /** True for a regular file. */
  isFile: boolean;
  /** True for a directory. */
  isDirectory: boolean;
}

/** The file type bits of `st_mode`, and three of their values. */
export const S_IFMT = 0o170000;
/** A regular file's type bits. */
export const S_IFREG = 0o100000;
/** A directory's type bits. */
export const S_IFDIR = 0o040000;
/** A symlink's type bits. */
export const S_IFLNK = 0o120000;

/** Decodes a `struct stat` that fstat(2) wrote into `st` (held as i64s, so every field is 8-aligned). */
export function decodeStat(st: BigInt64Array): FileStat {
  const mode = Number(st[STAT.st_mode / 8] & 0xffffffffn); // a u32: the low half of its i64
  return {
    dev: st[STAT.st_dev / 8],
    ino: st[STAT.st_ino / 8],
    nlink: Number(st[STAT.st_nlink / 8]),
    mode,
    size: Number(st[STAT.st_size / 8]),
    blocks: Number(st[STAT.st_blocks / 8]),
    mtimeNs: st[STAT.st_mtim / 8] * 1_000_000_000n + st[STAT.st_mtim / 8 + 1],
    ctimeNs: st[STAT.st_ctim / 8] * 1_000_000_000n + st[STAT.st_ctim / 8 + 1],
    isFile: (mode & S_IFMT) === S_IFREG,
    isDirectory: (mode & S_IFMT) === S_IFDIR,
  };
}

/** A file's type, size and identity, decoded without a bigint: what a client compares many files by. */
export interface StatIdentity {
  /** True for a regular file. */
  readonly isFile: boolean;
  /** Size in bytes. */
  readonly size: number;
  /**
   * Size, inode, mtime and ctime as one string, `size:inode:mtime:ctime` with each time as seconds and
   * nine digits of nanoseconds: equal strings, same identity; the last field reads as a number of seconds.
   */
  readonly key: string;
  /** The ctime in seconds (what the key's last field reads as, to within a rounding). */
  readonly ctime: number;
  /**
   * Where {@link key} ends in `text` if `text` holds it from `start` on; -1 if not. Read in place: a run
   * compares every file's identity with the line its state holds, and most never need the key made.
   */
  keyEndIn(text: string, start: number): number;
}

/**
 * Decodes what {@link StatIdentity} needs of a `struct stat`, viewed as u32 words (each field read is an
 * 8-aligned i64: two words make a number, exact below 2^53). Tens of thousands of files are compared per
 * run; building four bigints and an object per file cost more than the system call, and building each
 * key's text cost about half the call again (0.65 us a file warm, more before V8 optimizes it).
 */
export function decodeStatIdentity(words: Uint32Array): StatIdentity {
  return new DecodedIdentity(words);
}

/** Past this, a number is not exact as a double: such an identity is compared by its key's text. */
const EXACT_BELOW = 2 ** 53;

/** A {@link StatIdentity} holding its fields as numbers; its key is made when first asked for. */
class DecodedIdentity implements StatIdentity {
  readonly isFile: boolean;
  readonly size: number;
  readonly ctime: number;
  readonly #ino: number;
  readonly #mtime: number;
  readonly #mtimeNs: number;
  readonly #ctime: number;
  readonly #ctimeNs: number;
  #key: string | undefined;

  constructor(words: Uint32Array) {
    const u64 = (at: number) => words[at / 4] + words[at / 4 + 1] * 0x1_0000_0000;
    this.isFile = (words[STAT.st_mode / 4] & S_IFMT) === S_IFREG;
    this.size = u64(STAT.st_size);
    this.#ino = u64(STAT.st_ino);
    this.#mtime = u64(STAT.st_mtim);
    this.#mtimeNs = words[STAT.st_mtim / 4 + 2];
    this.#ctime = u64(STAT.st_ctim);
    this.#ctimeNs = words[STAT.st_ctim / 4 + 2];
    this.ctime = this.#ctime + this.#ctimeNs / 1e9;
  }

  get key(): string {
    const nine = (n: number) => String(n).padStart(9, "0");
    return this.#key ??= `${this.size}:${this.#ino}:${this.#mtime}.${nine(this.#mtimeNs)}:${this.#ctime}.${
      nine(this.#ctimeNs)
    }`;
  }

  keyEndIn(text: string, start: number): number {
    if (
      this.size >= EXACT_BELOW || this.#ino >= EXACT_BELOW || this.#mtime >= EXACT_BELOW ||
      this.#ctime >= EXACT_BELOW
    ) {
      const key = this.key;
      return text.startsWith(key, start) ? start + key.length : -1;
    }
    let at = decimalEnd(text, start, this.size, COLON);
    if (at >= 0) at = decimalEnd(text, at, this.#ino, COLON);
    if (at >= 0) at = decimalEnd(text, at, this.#mtime, DOT);
    if (at >= 0) at = nineDigitsEnd(text, at, this.#mtimeNs, COLON);
    if (at >= 0) at = decimalEnd(text, at, this.#ctime, DOT);
    return at >= 0 ? nineDigitsEnd(text, at, this.#ctimeNs, -1) : -1;
  }
}

const COLON = 0x3a, DOT = 0x2e, ZERO = 0x30;

/**
 * Where `value` written in decimal as `String` writes it (no leading zero) ends in `text` from `at`, past
 * the `separator` that must follow it; -1 if the text holds anything else there.
 */
function decimalEnd(text: string, at: number, value: number, separator: number): number {
  let parsed = 0, digits = 0;
  for (;; at++, digits++) {
    const digit = text.charCodeAt(at) - ZERO;
    if (!(digit >= 0 && digit <= 9)) break;
    if (digits === 1 && parsed === 0) return -1; // a leading zero
    parsed = parsed * 10 + digit;
    if (parsed > value) return -1;
  }
  if (digits === 0 || parsed !== value || text.charCodeAt(at) !== separator) return -1;
  return at + 1;
}

/**
 * Where `value` written as nine digits ends in `text` from `at`, past `separator` (-1: none, the key's
 * end); -1 if the text holds anything else there.
 */
function nineDigitsEnd(text: string, at: number, value: number, separator: number): number {
  let parsed = 0;
  const end = at + 9;
  for (; at < end; at++) {
    const digit = text.charCodeAt(at) - ZERO;
    if (!(digit >= 0 && digit <= 9)) return -1;
    parsed = parsed * 10 + digit;
  }
  if (parsed !== value) return -1;
  if (separator < 0) return at;
  return text.charCodeAt(at) === separator ? at + 1 : -1;
}

/**
 * What names a version of a file, and what a listing says of it, decoded from a `struct stat` viewed as
 * u32 words: the numbers as decimal text, as {@link FileStat}'s bigints would print, without making a
 * bigint (a listing decodes one per file; four bigints and their printing cost more than the call).
 */
export interface StatVersion {
  /** True for a regular file. */
  isFile: boolean;
  /** Size in bytes. */
  size: number;
  /** File type and permission bits. */
  mode: number;
  /** Device, decimal. */
  dev: string;
  /** Inode, decimal. */
  ino: string;
  /** Modification time in nanoseconds since the epoch, decimal. */
  mtimeNs: string;
}

/** Decodes a {@link StatVersion} from a `struct stat` viewed as u32 words. */
export function decodeStatVersion(words: Uint32Array): StatVersion {
  // For the rare number past 2^53 only.
  const st = () => new BigInt64Array(words.buffer, words.byteOffset, STAT.size / 8);
  const u64 = (at: number) =>
    words[at / 4 + 1] < 0x20_0000 // below 2^53: exact as a number
      ? String(words[at / 4] + words[at / 4 + 1] * 0x1_0000_0000)
      : String(BigInt.asUintN(64, st()[at / 8]));
  const seconds = words[STAT.st_mtim / 4] + words[STAT.st_mtim / 4 + 1] * 0x1_0000_0000;
  const nanoseconds = words[STAT.st_mtim / 4 + 2];
  const mode = words[STAT.st_mode / 4];
  return {
    isFile: (mode & S_IFMT) === S_IFREG,
    size: sizeOfStat(words),
    mode,
    dev: u64(STAT.st_dev),
    ino: u64(STAT.st_ino),
    mtimeNs: seconds > 0 && seconds < 2 ** 31
      ? `${seconds}${String(nanoseconds).padStart(9, "0")}`
      : String(st()[STAT.st_mtim / 8] * 1_000_000_000n + st()[STAT.st_mtim / 8 + 1]), // 1970, before, or far on
  };
}

/** The `st_size` of a `struct stat` given as u32 words (see {@link decodeStatVersion}). */
export function sizeOfStat(words: Uint32Array): number {
  return words[STAT.st_size / 4] + words[STAT.st_size / 4 + 1] * 0x1_0000_0000;
}

/** The address of a typed array's first byte, for storing in a struct (the array must stay referenced). */
export function addressOf(buf: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
}
