/**
 * Buffers that `read(2)` and `pread(2)` fill from the page cache at full speed.
 *
 * The kernel copies a file's cached pages, which start at page boundaries, into the caller's buffer.
 * glibc maps a large allocation on its own and places it 16 bytes past a page boundary (after its chunk
 * header): in a fresh Deno process here, every ArrayBuffer of 512 KiB or more started there, smaller ones
 * anywhere in a page. On the AMD EPYC machine ferry is measured on, the kernel's copy to a
 * destination that lies a few bytes past the source's place in its page runs at a quarter of its speed:
 * reading a cached 1 GiB file in reads of 256 KiB or 1 MiB took 523-608 ms into a buffer 16 bytes past a
 * page boundary, and 135-172 ms into one at the boundary, or 64 bytes or more past it. A socket's data
 * sent with `sendfile(2)` is those same pages: the client reading a 1 GiB `get` over loopback into such a
 * buffer spent 0.38-0.51 s of system time, and 0.26-0.31 s at a page boundary.
 *
 * @module
 */

/** The page size of the machines ferry runs on (x86-64 Linux). */
export const PAGE_SIZE = 4096;

/**
 * A buffer of `size` bytes that starts at a page boundary, for reading files into: a view into a slightly
 * larger ArrayBuffer (whose memory V8 never moves), so use the view, not its `.buffer`.
 */
export function pageAlignedBuffer(size: number): Uint8Array {
  const backing = new Uint8Array(size + PAGE_SIZE);
  const address = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(backing)));
  const skip = (PAGE_SIZE - (address % PAGE_SIZE)) % PAGE_SIZE;
  return backing.subarray(skip, skip + size);
}
