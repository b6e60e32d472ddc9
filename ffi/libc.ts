/**
 * The one binding of libc for ferry: the symbol table (with each C prototype beside it), errno, and thin
 * typed wrappers that turn `-1`/errno into a {@link LibcError} naming the call and the errno
 * (`accept4: EMFILE (Too many open files)`).
 *
 * Calls that are expected to "fail" in normal operation on nonblocking fds (EAGAIN) return
 * {@link WOULD_BLOCK} instead of throwing; EINTR is retried inside the wrapper. Everything above this
 * module works with numbers and typed arrays, never with raw return codes.
 *
 * Struct layouts live in `structs.ts`, socket addresses in `sockaddr.ts`, SCM_RIGHTS in `fdpass.ts`, epoll in
 * `epoll.ts`.
 *
 * @module
 */

import { constants as osConstants } from "node:os";
import {
  decodeStat,
  decodeStatIdentity,
  encodeOpenHow,
  type FileStat,
  inotifyEventsOf,
  OPEN_HOW,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  STAT,
  type StatIdentity,
  type StatVersion,
} from "./structs.ts";

export type { FileStat, StatIdentity, StatVersion };

const symbols = {
  __errno_location: { parameters: [], result: "pointer" }, // int *__errno_location(void)
  // glibc 2.32 and later; before, the names come from Node's table and the texts from strerror (errnoName).
  strerrorname_np: { parameters: ["i32"], result: "pointer", optional: true }, // const char *strerrorname_np(int errnum)
  strerrordesc_np: { parameters: ["i32"], result: "pointer", optional: true }, // const char *strerrordesc_np(int errnum)
  strerror: { parameters: ["i32"], result: "pointer" }, // char *strerror(int errnum)
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" }, // int socket(int domain, int type, int protocol)
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" }, // int socketpair(int, int, int, int sv[2])
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" }, // int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" }, // int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" }, // int bind(int fd, const struct sockaddr *addr, socklen_t len)
  listen: { parameters: ["i32", "i32"], result: "i32" }, // int listen(int fd, int backlog)
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" }, // int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" }, // int connect(int fd, const struct sockaddr *addr, socklen_t len)
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" }, // int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
  shutdown: { parameters: ["i32", "i32"], result: "i32" }, // int shutdown(int fd, int how)
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" }, // ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" }, // ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" }, // ssize_t send(int fd, const void *buf, size_t len, int flags)
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" }, // ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t addrlen)
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" }, // ssize_t recv(int fd, void *buf, size_t len, int flags)
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" }, // ssize_t read(int fd, void *buf, size_t count)
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" }, // ssize_t write(int fd, const void *buf, size_t count)
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" }, // ssize_t pread(int fd, void *buf, size_t count, off_t offset)
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" }, // ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" }, // int memfd_create(const char *name, unsigned int flags)
  ftruncate: { parameters: ["i32", "i64"], result: "i32" }, // int ftruncate(int fd, off_t length)
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" }, // void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" }, // int fallocate(int fd, int mode, off_t offset, off_t len)
  sendfile: { parameters: ["i32", "i32", "buffer", "usize"], result: "isize" }, // ssize_t sendfile(int out, int in, off_t *offset, size_t count)
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" }, // int fcntl(int fd, int cmd, int arg)
  close: { parameters: ["i32"], result: "i32" }, // int close(int fd)
  // The same call on Deno's blocking pool: the last close of a file replaced or removed frees its blocks.
  close_async: { name: "close", parameters: ["i32"], result: "i32", nonblocking: true },
  epoll_create1: { parameters: ["i32"], result: "i32" }, // int epoll_create1(int flags)
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" }, // int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" }, // int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout)
  // The same call on Deno's blocking pool, so the master's event loop (signals, child exits) keeps running.
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" }, // int eventfd(unsigned int initval, int flags)
  inet_pton: { parameters: ["i32", "buffer", "buffer"], result: "i32" }, // int inet_pton(int af, const char *src, void *dst)
  inet_ntop: { parameters: ["i32", "buffer", "buffer", "u32"], result: "pointer" }, // const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
  signal: { parameters: ["i32", "pointer"], result: "pointer" }, // sighandler_t signal(int sig, sighandler_t handler)
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" }, // int getrlimit(int resource, struct rlimit *rlim)
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" }, // int setrlimit(int resource, const struct rlimit *rlim)
  // fstat, fstatat and getdents64 by their system calls: glibc exports the first two only since 2.33 and the
  // third since 2.30, where Deno itself runs on 2.27. The numbers are x86_64's, as structs.ts's layouts are.
  fstat: { name: "syscall", parameters: ["i64", "i32", "buffer"], result: "i32" }, // fstat(int fd, struct stat *st)
  fstatat: { name: "syscall", parameters: ["i64", "i32", "buffer", "buffer", "i32"], result: "i32" }, // newfstatat(int dirfd, const char *path, struct stat *st, int flags)
  getdents64: { name: "syscall", parameters: ["i64", "i32", "buffer", "usize"], result: "isize" }, // getdents64(int fd, void *dirp, size_t count)
  syscall: { parameters: ["i64", "i64", "buffer", "buffer", "u64"], result: "i64" }, // long syscall(long nr, ...): used for openat2
  // For kernels without openat2 (before 5.6): a path walked one component at a time (see openWalking).
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" }, // int openat(int dirfd, const char *path, int flags, mode_t mode)
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" }, // ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
  // Calls relative to a directory fd, for the client's local tree (see the block at the end).
  mkdirat: { parameters: ["i32", "buffer", "u32"], result: "i32" }, // int mkdirat(int dirfd, const char *path, mode_t mode)
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" }, // int unlinkat(int dirfd, const char *path, int flags)
  renameat: { parameters: ["i32", "buffer", "i32", "buffer"], result: "i32" }, // int renameat(int olddirfd, const char *old, int newdirfd, const char *new)
  fsync: { parameters: ["i32"], result: "i32" }, // int fsync(int fd)
  fchmod: { parameters: ["i32", "u32"], result: "i32" }, // int fchmod(int fd, mode_t mode)
  futimens: { parameters: ["i32", "buffer"], result: "i32" }, // int futimens(int fd, const struct timespec times[2])
  syncfs: { parameters: ["i32"], result: "i32" }, // int syncfs(int fd)
  // The same call on Deno's blocking pool, so that a mirror goes on fetching while the disk catches up.
  syncfs_async: { name: "syncfs", parameters: ["i32"], result: "i32", nonblocking: true },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" }, // int clock_gettime(clockid_t clock, struct timespec *tp)
  clock_getres: { parameters: ["i32", "buffer"], result: "i32" }, // int clock_getres(clockid_t clock, struct timespec *res)
  fstatfs: { parameters: ["i32", "buffer"], result: "i32" }, // int fstatfs(int fd, struct statfs *buf)
  inotify_init1: { parameters: ["i32"], result: "i32" }, // int inotify_init1(int flags)
  inotify_add_watch: { parameters: ["i32", "buffer", "u32"], result: "i32" }, // int inotify_add_watch(int fd, const char *path, uint32_t mask)
} as const satisfies Deno.ForeignLibraryInterface;

type Symbols = typeof symbols;
type SymbolTable = Deno.DynamicLibrary<Symbols>["symbols"];

/**
 * The raw symbol table, for the other modules of `ffi/` only. Each symbol is bound on first use: Deno
 * builds a call stub per bound symbol (about 0.13 ms each), and no process uses all of them, so binding
 * the whole table up front cost every server and worker about 6 ms of start-up.
 */
export const sys = {} as SymbolTable;
for (const name of Object.keys(symbols) as (keyof Symbols)[]) {
  Object.defineProperty(sys, name, {
    configurable: true,
    enumerable: true,
    get() {
      // dlopen(3) of a library already loaded only counts a reference; the library stays for the process.
      const bound = Deno.dlopen("libc.so.6", { [name]: symbols[name] }).symbols[name];
      Object.defineProperty(sys, name, { value: bound, enumerable: true });
      return bound;
    },
  });
}

const errnoView = new Deno.UnsafePointerView(sys.__errno_location()!);

/** The current thread's errno. Meaningful only right after a synchronous call that failed. */
export function errno(): number {
  return errnoView.getInt32(0);
}

/** Linux constants used by ferry (x86_64 and the generic ABI). */
export const C = {
  AF_UNIX: 1,
  AF_INET: 2,
  AF_INET6: 10,
  SOCK_STREAM: 1,
  SOCK_DGRAM: 2,
  SOCK_SEQPACKET: 5,
  SOCK_NONBLOCK: 0o4000,
  SOCK_CLOEXEC: 0o2000000,
  SOL_SOCKET: 1,
  SO_REUSEADDR: 2,
  SO_TYPE: 3,
  SO_ERROR: 4,
  SO_SNDBUF: 7,
  SO_RCVBUF: 8,
  SO_RCVTIMEO: 20,
  SO_ACCEPTCONN: 30,
  IPPROTO_TCP: 6,
  IPPROTO_IPV6: 41,
  IPV6_V6ONLY: 26,
  TCP_NODELAY: 1,
  TCP_DEFER_ACCEPT: 9,
  SHUT_RD: 0,
  SHUT_WR: 1,
  SHUT_RDWR: 2,
  MSG_PEEK: 0x2,
  MSG_DONTWAIT: 0x40,
  MSG_NOSIGNAL: 0x4000,
  MSG_MORE: 0x8000,
  MSG_CMSG_CLOEXEC: 0x40000000,
  F_GETFD: 1,
  F_SETFD: 2,
  F_GETFL: 3,
  F_SETFL: 4,
  FD_CLOEXEC: 1,
  O_NONBLOCK: 0o4000,
  O_RDONLY: 0,
  O_NOCTTY: 0o400,
  O_CLOEXEC: 0o2000000,
  EFD_CLOEXEC: 0o2000000,
  EFD_NONBLOCK: 0o4000,
  IN_NONBLOCK: 0o4000,
  IN_CLOEXEC: 0o2000000,
  // inotify(7) event bits, and flags of inotify_add_watch
  IN_MODIFY: 0x2,
  IN_ATTRIB: 0x4,
  IN_CLOSE_WRITE: 0x8,
  IN_MOVED_FROM: 0x40,
  IN_MOVED_TO: 0x80,
  IN_CREATE: 0x100,
  IN_DELETE: 0x200,
  IN_DELETE_SELF: 0x400,
  IN_MOVE_SELF: 0x800,
  IN_Q_OVERFLOW: 0x4000,
  IN_IGNORED: 0x8000,
  IN_ONLYDIR: 0x1000000,
  SIGINT: 2,
  SIGTERM: 15,
  SIGHUP: 1,
  SIGUSR2: 12,
  RLIMIT_NOFILE: 7,
  // errno values, by name
  ENOENT: 2,
  EINTR: 4,
  ENOSPC: 28,
  EAGAIN: 11,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  EXDEV: 18,
  ENOTDIR: 20,
  ELOOP: 40,
  EAFNOSUPPORT: 97,
  ENOTCONN: 107,
  EINPROGRESS: 115,
} as const;

/** An error from a libc call: `call` is the function's name, `code` the errno, `name` its symbolic name. */
export class LibcError extends Error {
  /** The libc function that failed, e.g. `accept4`. */
  readonly call: string;
  /** The errno value. */
  readonly code: number;
  /** The errno's symbolic name, e.g. `EMFILE`. */
  readonly errnoName: string;

  /**
   * @param call the libc function that failed
   * @param code the errno it left
   * @param context optional words saying what ferry was doing, appended after the errno text
   */
  constructor(call: string, code: number, context?: string) {
    const name = errnoName(code);
    super(`${call}: ${name} (${errnoDescription(code)})${context ? ` ${context}` : ""}`);
    this.name = "LibcError";
    this.call = call;
    this.code = code;
    this.errnoName = name;
  }
}

/** Node's table of errno names (`os.constants.errno`), by value, each named as glibc names it. */
export function errnoNamesOfNode(): Map<number, string> {
  // Two values have a second name in the table; glibc gives each its first (EAGAIN, EOPNOTSUPP).
  const aliases = ["EWOULDBLOCK", "ENOTSUP"];
  const names = Object.entries(osConstants.errno).filter(([name]) => !aliases.includes(name));
  return new Map(names.map(([name, value]) => [value, name]));
}

/** The errno names by value where glibc cannot name them (strerrorname_np came with 2.32), made then. */
let errnoNamesWithoutGlibc: Map<number, string> | null = null;

/** The symbolic name of an errno value (`EMFILE`), from glibc (or Node's table, before glibc 2.32). */
export function errnoName(code: number): string {
  if (sys.strerrorname_np !== null) {
    const p = sys.strerrorname_np(code);
    return p === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(p);
  }
  errnoNamesWithoutGlibc ??= errnoNamesOfNode();
  return errnoNamesWithoutGlibc.get(code) ?? `errno ${code}`;
}

/** The text of an errno value (`Too many open files`), from glibc. */
export function errnoDescription(code: number): string {
  // strerror's text is the same; it is kept for glibc before 2.32, which has no strerrordesc_np.
  const p = sys.strerrordesc_np === null ? sys.strerror(code) : sys.strerrordesc_np(code);
  return p === null ? "unknown error" : Deno.UnsafePointerView.getCString(p);
}

/** Returned by the `try*` wrappers when a nonblocking fd is not ready (EAGAIN). */
export const WOULD_BLOCK = -1;

/** Throws a LibcError for `call` when `result` is -1, else returns it as a number. */
function check(call: string, result: number | bigint): number {
  if (result === -1 || result === -1n) throw new LibcError(call, errno());
  return Number(result);
}

/**
 * Runs `fn` again while it fails with EINTR; returns WOULD_BLOCK on EAGAIN; throws on any other error.
 */
function retrying(call: string, fn: () => number | bigint): number {
  for (;;) {
    const r = fn();
    if (r !== -1 && r !== -1n) return Number(r);
    const e = errno();
    if (e === C.EINTR) continue;
    if (e === C.EAGAIN) return WOULD_BLOCK;
    throw new LibcError(call, e);
  }
}

/** socket(2). */
export function socket(domain: number, type: number, protocol = 0): number {
  return check("socket", sys.socket(domain, type, protocol));
}

/** socketpair(2): returns both ends. */
export function socketpair(domain: number, type: number): [number, number] {
  const sv = new Int32Array(2);
  check("socketpair", sys.socketpair(domain, type, 0, sv));
  return [sv[0], sv[1]];
}

/** setsockopt(2) for an int option. */
export function setsockoptInt(fd: number, level: number, name: number, value: number): void {
  check("setsockopt", sys.setsockopt(fd, level, name, new Int32Array([value]), 4));
}

/**
 * setsockopt(2) for a `struct timeval` option (SO_RCVTIMEO, SO_SNDTIMEO), given in milliseconds: a blocking
 * call on `fd` then fails with EAGAIN instead of waiting longer. 0 means wait forever.
 */
export function setsockoptTimeval(fd: number, level: number, name: number, ms: number): void {
  const whole = Math.floor(ms / 1000);
  const timeval = new BigInt64Array([BigInt(whole), BigInt(Math.round((ms - whole * 1000) * 1000))]);
  check("setsockopt", sys.setsockopt(fd, level, name, timeval, timeval.byteLength));
}

/** getsockopt(2) for an int option. */
export function getsockoptInt(fd: number, level: number, name: number): number {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  check("getsockopt", sys.getsockopt(fd, level, name, value, len));
  return value[0];
}

/** bind(2) to an encoded sockaddr (see `structs.ts`). */
export function bind(fd: number, addr: Uint8Array): void {
  check("bind", sys.bind(fd, addr, addr.byteLength));
}

/** listen(2). */
export function listen(fd: number, backlog: number): void {
  check("listen", sys.listen(fd, backlog));
}

/**
 * accept4(2) on a nonblocking listener. Returns the new fd, or WOULD_BLOCK when the queue is empty.
 * The peer's address is written into `addr` (at least 28 bytes) when given.
 */
export function tryAccept4(fd: number, flags: number, addr?: Uint8Array): number {
  acceptAddrLen[0] = addr?.byteLength ?? 0;
  return retrying("accept4", () => sys.accept4(fd, addr ?? null, addr ? acceptAddrLen : null, flags));
}

// Reused for every accept: a small typed array made per call lives in V8's heap, and handing it to a
// foreign call moves it out first (a malloc and a free per connection in the master).
const acceptAddrLen = new Uint32Array(new ArrayBuffer(4));

/** connect(2). On a nonblocking socket, returns false while the connection is in progress. */
export function connect(fd: number, addr: Uint8Array): boolean {
  const r = sys.connect(fd, addr, addr.byteLength);
  if (r === 0) return true;
  const e = errno();
  if (e === C.EINPROGRESS) return false;
  throw new LibcError("connect", e);
}

/** getsockname(2) into `addr`; returns the length written. */
export function getsockname(fd: number, addr: Uint8Array): number {
  const len = new Uint32Array([addr.byteLength]);
  check("getsockname", sys.getsockname(fd, addr, len));
  return len[0];
}

/** shutdown(2); a socket that is already gone (ENOTCONN) is not an error here. */
export function shutdown(fd: number, how: number): void {
  if (sys.shutdown(fd, how) === -1 && errno() !== C.ENOTCONN) {
    throw new LibcError("shutdown", errno());
  }
}

/** send(2) with MSG_NOSIGNAL added. Returns bytes sent, or WOULD_BLOCK. */
export function trySend(fd: number, buf: Uint8Array, flags = 0): number {
  return retrying("send", () => sys.send(fd, buf, BigInt(buf.byteLength), flags | C.MSG_NOSIGNAL));
}

/**
 * sendto(2) of one datagram to the address `addr` (an encoded sockaddr), with MSG_NOSIGNAL. Returns the
 * bytes sent, or WOULD_BLOCK.
 */
export function trySendTo(fd: number, buf: Uint8Array, addr: Uint8Array): number {
  return retrying(
    "sendto",
    () => sys.sendto(fd, buf, BigInt(buf.byteLength), C.MSG_NOSIGNAL, addr, addr.byteLength),
  );
}

/** recv(2). Returns bytes received (0 at end of stream), or WOULD_BLOCK. */
export function tryRecv(fd: number, buf: Uint8Array, flags = 0): number {
  return retrying("recv", () => sys.recv(fd, buf, BigInt(buf.byteLength), flags));
}

/** read(2). Returns bytes read (0 at end), or WOULD_BLOCK. */
export function tryRead(fd: number, buf: Uint8Array): number {
  return retrying("read", () => sys.read(fd, buf, BigInt(buf.byteLength)));
}

/** write(2). Returns bytes written, or WOULD_BLOCK. */
export function tryWrite(fd: number, buf: Uint8Array): number {
  return retrying("write", () => sys.write(fd, buf, BigInt(buf.byteLength)));
}

/** pread(2): reads up to `buf.byteLength` bytes at `offset`; returns the count (0 at end of file). */
export function pread(fd: number, buf: Uint8Array, offset: number): number {
  return retrying("pread", () => sys.pread(fd, buf, BigInt(buf.byteLength), BigInt(offset)));
}

/** pwrite(2) of all of `buf` at `offset`, however many calls it takes (for regular and memory files). */
export function pwriteAll(fd: number, buf: Uint8Array, offset: number): void {
  for (let done = 0; done < buf.byteLength;) {
    const n = retrying("pwrite", () => {
      const rest = buf.subarray(done);
      return sys.pwrite(fd, rest, BigInt(rest.byteLength), BigInt(offset + done));
    });
    if (n === WOULD_BLOCK || n === 0) {
      throw new Error(`pwrite: no progress at byte ${done} of ${buf.byteLength}`);
    }
    done += n;
  }
}

/** memfd_create(2): an anonymous file in memory, close-on-exec; `name` only shows in /proc. */
export function memfdCreate(name: string): number {
  const MFD_CLOEXEC = 1;
  return check("memfd_create", sys.memfd_create(utf8.encode(`${name}\0`), MFD_CLOEXEC));
}

/** ftruncate(2): sets the file's size (a memfd's pages read as zeros until written). */
export function ftruncate(fd: number, length: number): void {
  check("ftruncate", sys.ftruncate(fd, BigInt(length)));
}

/**
 * Maps `length` bytes of `fd` from offset 0, readable and writable and shared with every process that maps
 * the same file (mmap(2) with MAP_SHARED). The mapping lasts as long as the process: it is never unmapped,
 * so the ArrayBuffer over it stays valid.
 */
export function mmapShared(fd: number, length: number): ArrayBuffer {
  const PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1;
  const address = sys.mmap(null, BigInt(length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  // MAP_FAILED is (void *)-1.
  if (address === null || Deno.UnsafePointer.value(address) === 0xffff_ffff_ffff_ffffn) {
    throw new LibcError("mmap", errno());
  }
  return Deno.UnsafePointerView.getArrayBuffer(address, length);
}

/**
 * Frees the pages of `length` bytes at `offset` of a file (fallocate(2) with FALLOC_FL_PUNCH_HOLE), which
 * then reads as zeros; the file keeps its size. Pages that a socket still holds are freed when it lets go.
 */
export function punchHole(fd: number, offset: number, length: number): void {
  const FALLOC_FL_KEEP_SIZE = 1, FALLOC_FL_PUNCH_HOLE = 2;
  check(
    "fallocate",
    sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(offset), BigInt(length)),
  );
}

const sendfileOffset = new BigInt64Array(1);

/**
 * sendfile(2) of up to `count` bytes of `inFd` from `offset` to the socket `outFd`.
 * Returns bytes sent (0 when the file ended early), or WOULD_BLOCK when the socket is full.
 */
export function trySendfile(outFd: number, inFd: number, offset: number, count: number): number {
  sendfileOffset[0] = BigInt(offset);
  return retrying("sendfile", () => sys.sendfile(outFd, inFd, sendfileOffset, BigInt(count)));
}

/** Sets or clears O_NONBLOCK. */
export function setNonBlocking(fd: number, on: boolean): void {
  const flags = check("fcntl", sys.fcntl(fd, C.F_GETFL, 0));
  check("fcntl", sys.fcntl(fd, C.F_SETFL, on ? flags | C.O_NONBLOCK : flags & ~C.O_NONBLOCK));
}

/** Sets or clears FD_CLOEXEC: cleared only on the one fd a child process must inherit. */
export function setCloseOnExec(fd: number, on: boolean): void {
  check("fcntl", sys.fcntl(fd, C.F_SETFD, on ? C.FD_CLOEXEC : 0));
}

/** A duplicate of `fd` with close-on-exec set (fcntl F_DUPFD_CLOEXEC): same open file, own lifetime. */
export function dupCloseOnExec(fd: number): number {
  const F_DUPFD_CLOEXEC = 1030;
  return check("fcntl(F_DUPFD_CLOEXEC)", sys.fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

/** close(2). EINTR is not retried: on Linux the fd is gone either way. */
export function close(fd: number): void {
  const r = sys.close(fd);
  if (r === -1 && errno() !== C.EINTR) throw new LibcError("close", errno());
}

/** eventfd(2), nonblocking and close-on-exec: a wake-up fd for an epoll loop. */
export function eventfd(): number {
  return check("eventfd", sys.eventfd(0, C.EFD_CLOEXEC | C.EFD_NONBLOCK));
}

/** Ignores a signal at the process level (SIG_IGN), e.g. in workers that leave SIGINT to the master. */
export function ignoreSignal(signal: number): void {
  sys.signal(signal, Deno.UnsafePointer.create(1n));
}

/** Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit. */
export function raiseOpenFileLimit(): number {
  const rlim = new BigUint64Array(2);
  check("getrlimit", sys.getrlimit(C.RLIMIT_NOFILE, rlim));
  if (rlim[0] < rlim[1]) {
    rlim[0] = rlim[1];
    check("setrlimit", sys.setrlimit(C.RLIMIT_NOFILE, rlim));
  }
  return Number(rlim[0]);
}

/** x86_64's numbers of the system calls bound by number (see the symbol table). */
const SYS_fstat = 5n, SYS_newfstatat = 262n, SYS_getdents64 = 217n, SYS_openat2 = 437n;
const AT_FDCWD = -100n;
const O_DIRECTORY = 0o200000;
const RESOLVE_NO_MAGICLINKS = 0x02n;
const RESOLVE_BENEATH = 0x08n;
const openHow = new BigUint64Array(OPEN_HOW.size / 8);
const OPEN_HOW_SIZE = BigInt(OPEN_HOW.size);
const openPath = new Uint8Array(4097);
/** The second path of a call that takes two (renameat). */
const secondPath = new Uint8Array(4097);
const utf8 = new TextEncoder();

/**
 * Writes `path` into `into` (`openPath` unless a call takes two) as a NUL-terminated C string; too long is
 * ENAMETOOLONG for `call`.
 */
function putPath(path: string, call: string, into = openPath): void {
  // An ASCII path is copied by a loop: TextEncoder's call cost three times as much (11.5 against 4.0 ms for
  // 100,000 names of 11-13 characters), and a mirror where nothing changed makes one per file.
  const length = path.length;
  if (length < into.byteLength) {
    let at = 0;
    for (let code; at < length && (code = path.charCodeAt(at)) < 0x80; at++) into[at] = code;
    if (at === length) {
      into[length] = 0;
      return;
    }
  }
  // The encoder stops before a character that does not fit whole: a path it did not read to its end would
  // otherwise reach the kernel cut short, and name another file.
  const { read, written } = utf8.encodeInto(path, into);
  if (read < length || written >= into.byteLength) {
    throw new LibcError(call, C.ENAMETOOLONG, `(a path of more than ${into.byteLength - 1} bytes)`);
  }
  into[written] = 0;
}

/** Options of {@link openRead}. */
export interface OpenReadOptions {
  /**
   * Resolve `path` inside this directory fd and refuse any resolution (`..`, absolute paths, symlinks)
   * that would leave it (RESOLVE_BENEATH): the kernel checks every step, so no race with a symlink
   * swapped in meanwhile. Without it, `path` is resolved from the working directory as usual.
   */
  beneath?: number;
  /** Require a directory (O_DIRECTORY). @default false */
  directory?: boolean;
}

/**
 * openat2(2) read-only, nonblocking (a FIFO must not block the worker), close-on-exec (on a kernel without
 * openat2, the same by {@link openWalking}). Throws LibcError("openat2", EXDEV) for an escape from
 * `beneath`, ENOENT, EACCES, ELOOP... as usual.
 */
export function openRead(path: string, options: OpenReadOptions = {}): number {
  const flags = C.O_RDONLY | C.O_NONBLOCK | C.O_CLOEXEC | C.O_NOCTTY | (options.directory ? O_DIRECTORY : 0);
  if (!kernelHasOpenat2) {
    return openWalking(options.beneath, path, flags, 0, options.beneath !== undefined, true);
  }
  putPath(path, "openat2");
  const resolve = options.beneath === undefined ? 0n : RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  encodeOpenHow(openHow, flags, 0, resolve);
  const dir = options.beneath === undefined ? AT_FDCWD : BigInt(options.beneath);
  for (;;) {
    const r = sys.syscall(SYS_openat2, dir, openPath, openHow, OPEN_HOW_SIZE);
    if (r !== -1n) return Number(r);
    const e = errno();
    if (e === C.ENOSYS) return withoutOpenat2(() => openRead(path, options));
    if (e !== C.EINTR) throw new LibcError("openat2", e, `opening ${JSON.stringify(path)}`);
  }
}

/**
 * getdents64(2): fills `buf` with the next `struct linux_dirent64` records of the open directory `fd`
 * (layout: `DIRENT64` in structs.ts); returns the bytes filled, 0 at the end. Names come as raw bytes,
 * whatever their encoding, with their type, and no second fd is needed to read the directory.
 */
export function getdents(fd: number, buf: Uint8Array): number {
  for (;;) {
    const r = sys.getdents64(SYS_getdents64, fd, buf, BigInt(buf.byteLength));
    if (r !== -1n) return Number(r);
    if (errno() !== C.EINTR) throw new LibcError("getdents64", errno());
  }
}

const statBuf = new BigInt64Array(STAT.size / 8);
const statWords = new Uint32Array(statBuf.buffer);

/** fstat(2) of an fd. */
export function fstat(fd: number): FileStat {
  check("fstat", sys.fstat(SYS_fstat, fd, statBuf));
  return decodeStat(statBuf);
}

/**
 * fstatat(2) of `path` relative to the directory fd `dirFd`, following symlinks. Unlike
 * {@link openRead}'s `beneath`, nothing keeps the resolution inside `dirFd`: use it only to compare with
 * a file that was opened safely before.
 */
export function statAt(dirFd: number, path: string): FileStat {
  putPath(path, "fstatat");
  if (sys.fstatat(SYS_newfstatat, dirFd, openPath, statBuf, 0) === -1) {
    throw new LibcError("fstatat", errno(), `of ${JSON.stringify(path)}`);
  }
  return decodeStat(statBuf);
}

// ---- The client's local tree: files named relative to a directory fd, resolved without following symlinks.

const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_REMOVEDIR = 0x200;
const RESOLVE_NO_SYMLINKS = 0x04n;

/** Flags of {@link openAt}. */
export const OPEN = {
  O_RDONLY: 0,
  O_WRONLY: 1,
  O_RDWR: 2,
  O_CREAT: 0o100,
  O_EXCL: 0o200,
  O_DIRECTORY,
  /**
   * An unnamed file in the directory `path` names (with O_RDWR or O_WRONLY): its blocks go back to the
   * file system when its last fd closes, so a process that dies leaves nothing behind.
   */
  O_TMPFILE: 0o20000000 | O_DIRECTORY,
} as const;

/** Options of {@link openAt}. */
export interface OpenAtOptions {
  /** Permission bits of a file O_CREAT or O_TMPFILE makes (ignored without them). @default 0 */
  mode?: number;
  /**
   * Follow no symlink in any component of `path`, its last one included (that fails with ELOOP), and
   * never leave `dirFd` (RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH): what another user planted or swaps in
   * meanwhile cannot redirect the open. Without it, symlinks are followed as usual.
   */
  noSymlinks?: boolean;
}

/**
 * openat2(2) of `path` relative to the directory fd `dirFd` (or the working directory when `dirFd` is
 * undefined), close-on-exec and without becoming a controlling terminal; `flags` from {@link OPEN} (on a
 * kernel without openat2, the same by {@link openWalking}). Returns the new fd. EINTR and a rename racing
 * the lookup (EAGAIN) are retried.
 */
export function openAt(
  dirFd: number | undefined,
  path: string,
  flags: number,
  options: OpenAtOptions = {},
): number {
  // openat2 refuses a mode without O_CREAT or O_TMPFILE (EINVAL), where openat ignores it.
  const creates = (flags & OPEN.O_CREAT) !== 0 || (flags & OPEN.O_TMPFILE) === OPEN.O_TMPFILE;
  const mode = creates ? options.mode ?? 0 : 0;
  const noSymlinks = options.noSymlinks ?? false;
  if (!kernelHasOpenat2) {
    return openWalking(dirFd, path, flags | C.O_CLOEXEC | C.O_NOCTTY, mode, noSymlinks, false);
  }
  putPath(path, "openat2");
  const resolve = noSymlinks ? RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS : 0n;
  encodeOpenHow(openHow, flags | C.O_CLOEXEC | C.O_NOCTTY, mode, resolve);
  const dir = dirFd === undefined ? AT_FDCWD : BigInt(dirFd);
  for (let tries = 0;; tries++) {
    const r = sys.syscall(SYS_openat2, dir, openPath, openHow, OPEN_HOW_SIZE);
    if (r !== -1n) return Number(r);
    const e = errno();
    if (e === C.ENOSYS) return withoutOpenat2(() => openAt(dirFd, path, flags, options));
    if (e !== C.EINTR && (e !== C.EAGAIN || tries >= 100)) throw new LibcError("openat2", e);
  }
}

// ---- Without openat2 (Linux before 5.6): the same rules, by a walk of one component at a time.

/** False once openat2 failed with ENOSYS: every later open walks its path (see {@link openWalking}). */
let kernelHasOpenat2 = true;

/** Notes that the kernel has no openat2, and runs `open` again, which then walks. */
function withoutOpenat2(open: () => number): number {
  kernelHasOpenat2 = false;
  return open();
}

/** True where this process opens paths without openat2 (a kernel before 5.6). */
export function opensWithoutOpenat2(): boolean {
  return !kernelHasOpenat2;
}

const O_PATH = 0o10000000, O_NOFOLLOW = 0o400000, AT_EMPTY_PATH_NAME = "";
/** Symlinks a walk follows at most, as the kernel's path walk (MAXSYMLINKS). */
const MAX_SYMLINKS = 40;
const componentPath = new Uint8Array(256 + 1);
const linkTarget = new Uint8Array(4096);
const utf8Decoder = new TextDecoder();

/**
 * openat(2) of `name` in `dirFd` (one component, unless a whole path is put in `into`, the buffer that
 * holds one), EINTR retried; throws a LibcError naming `path`.
 */
function openComponent(
  dirFd: number,
  name: string,
  flags: number,
  mode: number,
  path: string,
  into = componentPath,
): number {
  putPath(name, "openat", into);
  for (;;) {
    const fd = sys.openat(dirFd, into, flags, mode);
    if (fd !== -1) return fd;
    if (errno() !== C.EINTR) throw new LibcError("openat", errno(), `opening ${JSON.stringify(path)}`);
  }
}

/**
 * Opens `path` from `dirFd` (the working directory when undefined) as openat2 would, walking it one
 * component at a time with O_PATH fds, each opened relative to the last, none by a name looked up again:
 *
 * - `beneath`: nothing may lead above `dirFd`. An absolute path or symlink, or a `..` above it, fails
 *   with EXDEV (RESOLVE_BENEATH). A symlink's target is read and walked as a path (RESOLVE_NO_MAGICLINKS):
 *   one of /proc's magic links reads as an absolute path or as a name such as `pipe:[N]`, and is never
 *   followed to what it stands for. Without `beneath`, a plain openat(2).
 * - `followLinks`: symlinks are followed while they stay beneath; without it, a symlink anywhere fails with
 *   ELOOP (RESOLVE_NO_SYMLINKS). The last component is opened with O_NOFOLLOW either way, so a symlink
 *   swapped in after the walk looked at it fails with ELOOP.
 */
function openWalking(
  dirFd: number | undefined,
  path: string,
  flags: number,
  mode: number,
  beneath: boolean,
  followLinks: boolean,
): number {
  const start = dirFd ?? Number(AT_FDCWD);
  if (!beneath) return openComponent(start, path, flags, mode, path, openPath);
  const refused = (code: number) => new LibcError("openat", code, `opening ${JSON.stringify(path)}`);
  if (path.startsWith("/")) throw refused(C.EXDEV);
  putPath(path, "openat"); // only to refuse a path too long, as openat2 would
  const rest = path.split("/").reverse(); // the next component last
  const folders: number[] = []; // O_PATH fds below `start`, the innermost last
  const here = () => folders.at(-1) ?? start;
  const meaningful = (name: string) => name !== "" && name !== ".";
  let links = 0;
  try {
    while (rest.some(meaningful)) {
      const name = rest.pop()!;
      if (!meaningful(name)) continue;
      if (name === "..") {
        if (folders.length === 0) throw refused(C.EXDEV);
        close(folders.pop()!);
        continue;
      }
      const last = !rest.some(meaningful);
      if (last) {
        // Opened as asked (it may be a file to create), never through a symlink: one there is ELOOP.
        try {
          return openComponent(here(), name, flags | O_NOFOLLOW, mode, path);
        } catch (e) {
          if (!followLinks || !(e instanceof LibcError) || e.code !== C.ELOOP) throw e;
        }
      }
      const probe = openComponent(here(), name, O_PATH | O_NOFOLLOW | C.O_CLOEXEC, 0, path);
      let type: number, target = "";
      try {
        type = fstat(probe).mode & S_IFMT;
        if (type === S_IFLNK && followLinks) target = readLinkOf(probe, path);
      } catch (e) {
        close(probe);
        throw e;
      }
      if (type === S_IFLNK) {
        close(probe);
        if (!followLinks || ++links > MAX_SYMLINKS) throw refused(C.ELOOP);
        if (target.startsWith("/")) throw refused(C.EXDEV);
        rest.push(...target.split("/").reverse());
        continue;
      }
      if (last) {
        // It was a symlink a moment ago, and is something else now: what was asked for moved meanwhile.
        close(probe);
        throw refused(C.ELOOP);
      }
      if (type !== S_IFDIR) {
        close(probe);
        throw refused(C.ENOTDIR);
      }
      folders.push(probe);
    }
    // The path names `start` or a folder the walk holds ("", ".", "a/.."): opened as itself.
    return openComponent(here(), ".", flags, mode, path);
  } finally {
    for (const fd of folders) close(fd);
  }
}

/** The target of the symlink open as the O_PATH fd `fd` (readlinkat(2) of the fd itself). */
function readLinkOf(fd: number, path: string): string {
  putPath(AT_EMPTY_PATH_NAME, "readlinkat", componentPath);
  const n = Number(sys.readlinkat(fd, componentPath, linkTarget, BigInt(linkTarget.byteLength)));
  if (n === -1) throw new LibcError("readlinkat", errno(), `of a link in ${JSON.stringify(path)}`);
  return utf8Decoder.decode(linkTarget.subarray(0, n));
}

/** mkdirat(2): a directory `name` in `dirFd` (a symlink there is not followed: EEXIST). */
export function mkdirAt(dirFd: number, name: string, mode = 0o777): void {
  putPath(name, "mkdirat");
  check("mkdirat", sys.mkdirat(dirFd, openPath, mode));
}

/** unlinkat(2): removes the name `name` in `dirFd` (a symlink itself, never what it points to). */
export function unlinkAt(dirFd: number, name: string, options: { directory?: boolean } = {}): void {
  putPath(name, "unlinkat");
  check("unlinkat", sys.unlinkat(dirFd, openPath, options.directory ? AT_REMOVEDIR : 0));
}

/** renameat(2): the last components are never followed, so a symlink at `to` is replaced, not written through. */
export function renameAt(fromDirFd: number, from: string, toDirFd: number, to: string): void {
  // Both into buffers of their own, not copies made per call: a first copy renames every file it makes.
  putPath(from, "renameat");
  putPath(to, "renameat", secondPath);
  check("renameat", sys.renameat(fromDirFd, openPath, toDirFd, secondPath));
}

/**
 * close(2) of `fd` on Deno's blocking pool; resolves once it is closed (whatever close returned: the fd is
 * gone either way). For the last reference to a file replaced or removed, whose blocks the kernel frees in
 * that close (about 70 us for 4 KiB and 6 ms for 20 MiB on ext4 here), so that the caller goes on meanwhile.
 */
export async function closeInBackground(fd: number): Promise<void> {
  await sys.close_async(fd);
}

/**
 * Files {@link renameOver} holds open at most while the blocking pool lets go of them: a batch renames
 * thousands in one loop, and each held fd counts against the process's limit (1,024 by default), which the
 * next part's open must not meet. Past it, a rename frees what it replaces itself, as renameAt does.
 */
const MAX_HELD = 64;
let heldNow = 0;

/**
 * {@link renameAt} over a `to` that may exist: the file it replaces is held open across the rename and let
 * go of by {@link closeInBackground}, so that the kernel frees its blocks on Deno's blocking pool instead of
 * in the rename. Resolves once it is (at once if `to` was not there). Throws as renameAt does.
 */
export function renameOver(fromDirFd: number, from: string, toDirFd: number, to: string): Promise<void> {
  const held = heldNow < MAX_HELD ? holdAt(toDirFd, to) : -1;
  try {
    renameAt(fromDirFd, from, toDirFd, to);
  } catch (e) {
    if (held !== -1) sys.close(held); // `to` is still there: this close frees nothing
    throw e;
  }
  if (held === -1) return Promise.resolve();
  heldNow++;
  return closeInBackground(held).finally(() => heldNow--);
}

/**
 * An O_PATH fd of `name` in `dirFd`, the object itself (a symlink too), which opens nothing of it: no FIFO
 * blocks, no device acts. -1 if there is nothing there, or the kernel has no openat2 (the caller does
 * without). openat2 refuses O_PATH with any flag but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW: not openAt.
 */
function holdAt(dirFd: number, name: string): number {
  putPath(name, "openat2");
  encodeOpenHow(openHow, O_PATH | O_NOFOLLOW | C.O_CLOEXEC, 0, 0n);
  const r = sys.syscall(SYS_openat2, BigInt(dirFd), openPath, openHow, OPEN_HOW_SIZE);
  return r === -1n ? -1 : Number(r);
}

/** fsync(2), e.g. of a directory after a rename in it. */
export function fsync(fd: number): void {
  for (;;) {
    if (sys.fsync(fd) === 0) return;
    if (errno() !== C.EINTR) throw new LibcError("fsync", errno());
  }
}

/** fchmod(2): permission bits of the file open as `fd`, whatever name it has meanwhile. */
export function fchmod(fd: number, mode: number): void {
  check("fchmod", sys.fchmod(fd, mode));
}

/**
 * fstatat(2) of `name` in `dirFd` without following a symlink there, decoded as a {@link StatIdentity};
 * null when nothing has that name (ENOENT).
 */
export function identityAt(dirFd: number, name: string): StatIdentity | null {
  putPath(name, "fstatat");
  if (sys.fstatat(SYS_newfstatat, dirFd, openPath, statBuf, AT_SYMLINK_NOFOLLOW) === -1) {
    if (errno() === C.ENOENT) return null;
    throw new LibcError("fstatat", errno(), `of ${JSON.stringify(name)}`);
  }
  return decodeStatIdentity(statWords);
}

/**
 * {@link lstatAt} left undecoded: the `struct stat` as u32 words, in a buffer this module shares between
 * its calls (valid until the next one), for a caller that compares a few fields before decoding any
 * (`decodeStatVersion` of ffi/structs.ts decodes them without a bigint).
 */
export function statWordsAt(dirFd: number, name: string): Uint32Array {
  putPath(name, "fstatat");
  if (sys.fstatat(SYS_newfstatat, dirFd, openPath, statBuf, AT_SYMLINK_NOFOLLOW) === -1) {
    throw new LibcError("fstatat", errno(), `of ${JSON.stringify(name)}`);
  }
  return statWords;
}

/** fstatat(2) of `name` in `dirFd` without following a symlink there (AT_SYMLINK_NOFOLLOW). */
export function lstatAt(dirFd: number, name: string): FileStat {
  statWordsAt(dirFd, name);
  return decodeStat(statBuf);
}

const timespecs = new BigInt64Array(4); // struct timespec times[2]: atime, then mtime (tv_sec, tv_nsec)

/** futimens(2): sets the access and modification times of the file open as `fd` to `mtimeNs`. */
export function futimens(fd: number, mtimeNs: bigint): void {
  let seconds = mtimeNs / 1_000_000_000n, nanoseconds = mtimeNs % 1_000_000_000n;
  if (nanoseconds < 0n) [seconds, nanoseconds] = [seconds - 1n, nanoseconds + 1_000_000_000n]; // before 1970
  timespecs.set([seconds, nanoseconds, seconds, nanoseconds]);
  check("futimens", sys.futimens(fd, timespecs));
}

/**
 * syncfs(2): writes every dirty page and inode of the file system that holds `fd` to disk, in one call
 * (one journal commit for all of them, where an fsync per file costs one each).
 */
export function syncfs(fd: number): void {
  check("syncfs", sys.syncfs(fd));
}

/**
 * {@link syncfs} on Deno's blocking pool: resolves once the file system is on disk, while the caller's
 * event loop runs on. errno does not survive the other thread, so a failure is asked again synchronously:
 * that call throws the LibcError naming it, or finds the disk caught up meanwhile.
 */
export async function syncfsInBackground(fd: number): Promise<void> {
  if (await sys.syncfs_async(fd) === -1) syncfs(fd);
}

const monotonicTimespec = new BigInt64Array(2);

/**
 * The resolution of CLOCK_REALTIME_COARSE in seconds (clock_getres(2)): one tick of the kernel's clock,
 * which is what stamps files' times (4 ms at 250 Hz).
 */
export function coarseClockTick(): number {
  const resolution = new BigInt64Array(2);
  check("clock_getres", sys.clock_getres(CLOCK_REALTIME_COARSE, resolution));
  return Number(resolution[0]) + Number(resolution[1]) / 1e9;
}

/**
 * CLOCK_REALTIME_COARSE now, in seconds since the epoch (clock_gettime(2)): the time a file changed now
 * would be stamped with, at least. It lags the real clock by a tick, or by more on a machine whose ticks
 * come late (a loaded virtual machine: 5 ms at 250 Hz was seen).
 */
export function coarseClockNow(): number {
  check("clock_gettime", sys.clock_gettime(CLOCK_REALTIME_COARSE, coarseTimespec));
  return Number(coarseTimespec[0]) + Number(coarseTimespec[1]) / 1e9;
}

const CLOCK_REALTIME_COARSE = 5;
const coarseTimespec = new BigInt64Array(2);

/** The `f_type` of the file system the file open as `fd` is on (fstatfs(2)): its magic number. */
export function fileSystemType(fd: number): number {
  // struct statfs begins with `__fsword_t f_type` (a long on x86_64); 120 bytes in all.
  const buf = new BigInt64Array(15);
  check("fstatfs", sys.fstatfs(fd, buf));
  return Number(buf[0]);
}

/** inotify_init1(2): a new inotify instance, nonblocking and close-on-exec. */
export function inotifyInit(): number {
  return check("inotify_init1", sys.inotify_init1(C.IN_NONBLOCK | C.IN_CLOEXEC));
}

/**
 * The events queued on the nonblocking inotify instance `inotifyFd` now, each as {@link inotifyEventsOf}
 * gives it, read into `buffer` as many times as it takes. Stop taking them (or close the instance) at any
 * time; what is left stays queued.
 */
export function* inotifyEventsQueued(
  inotifyFd: number,
  buffer: Uint8Array,
): Generator<{ wd: number; mask: number; name: Uint8Array }> {
  for (;;) {
    const n = tryRead(inotifyFd, buffer);
    if (n === WOULD_BLOCK || n === 0) return;
    yield* inotifyEventsOf(buffer, n);
  }
}

/**
 * inotify_add_watch(2) of the file open as `fd`, by its `/proc/self/fd` link: the watch is on that very
 * file, whatever its path leads to by now. Returns the watch descriptor (the same one for a file already
 * watched, whose mask `mask` then replaces).
 */
export function inotifyWatchOpen(inotifyFd: number, fd: number, mask: number): number {
  putPath(`/proc/self/fd/${fd}`, "inotify_add_watch");
  return check("inotify_add_watch", sys.inotify_add_watch(inotifyFd, openPath, mask));
}

/**
 * CLOCK_MONOTONIC in microseconds (clock_gettime(2)): the clock systemd reads, where `performance.now()`
 * counts from the process's start.
 */
export function monotonicMicros(): bigint {
  const CLOCK_MONOTONIC = 1;
  check("clock_gettime", sys.clock_gettime(CLOCK_MONOTONIC, monotonicTimespec));
  return monotonicTimespec[0] * 1_000_000n + monotonicTimespec[1] / 1000n;
}
