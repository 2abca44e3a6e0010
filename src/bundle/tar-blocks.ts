import {Header} from 'tar';

/**
 * The outer tar of a bundle at the block level: one ustar header per entry (no pax, no
 * directories, no links), the content padded to 512 bytes, and two zero blocks at the end.
 * Writing and reading headers by hand keeps both sides in step with docs/formats.md, and lets a
 * reader compute every entry's offset from bundle.json alone; tar's Header does the field codec.
 */

export const BLOCK = 512;
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

export interface EntryHeader {
  readonly path: string;
  readonly size: number;
  readonly mode: number;
  readonly mtime: Date;
}

/** Content bytes rounded up to whole blocks. */
export const paddedSize = (size: number): number => Math.ceil(size / BLOCK) * BLOCK;

/** Where an entry's content starts and the next header starts, given where its header starts. */
export const entrySpan = (headerOffset: number, size: number): {contentOffset: number; next: number} => ({
  contentOffset: headerOffset + BLOCK,
  next: headerOffset + BLOCK + paddedSize(size),
});

/** The largest size the 11 octal digits of the ustar size field hold: 8 GiB - 1. */
export const OCTAL_SIZE_MAX = 0o77777777777;

/**
 * One 512-byte ustar header for a regular file. A size above OCTAL_SIZE_MAX is written in the
 * GNU base-256 form (0x80, then the size big-endian in the remaining 11 bytes), which GNU tar,
 * bsdtar and tar's Header read; a path that would need pax is refused.
 */
export function encodeEntryHeader(entry: EntryHeader): Buffer {
  const block = Buffer.alloc(BLOCK);
  // tar's Header writes an oversized number in base-256 (the checksum is computed after) but
  // reports it as needing pax, like an oversized name; only the name is a refusal here.
  if (headerFor(entry.path, 0, entry).encode(block, 0)) {
    throw new Error(`bundle entry ${JSON.stringify(entry.path)} does not fit a ustar header (an ASCII name of at most 255 bytes, split at a slash into at most 155 + 100)`);
  }
  if (!Number.isSafeInteger(entry.size) || entry.size < 0) throw new Error(`bundle entry ${JSON.stringify(entry.path)} has an impossible size ${entry.size}`);
  block.fill(0);
  headerFor(entry.path, entry.size, entry).encode(block, 0);
  return block;
}

function headerFor(entryPath: string, size: number, entry: EntryHeader): Header {
  return new Header({
    path: entryPath,
    mode: entry.mode,
    uid: 0,
    gid: 0,
    uname: '',
    gname: '',
    size,
    mtime: new Date(Math.floor(entry.mtime.getTime() / 1000) * 1000),
    type: 'File',
  });
}

export interface DecodedHeader {
  readonly path: string;
  readonly size: number;
  readonly mode: number;
  /** tar's one-character type code: '0' for a regular file. */
  readonly typeKey: string;
  readonly cksumValid: boolean;
  /** An all-zero block: the end of the archive. */
  readonly nullBlock: boolean;
}

/** Decodes one header block without interpreting it; the reader decides what it accepts. */
export function decodeEntryHeader(block: Buffer): DecodedHeader {
  const header = new Header(block, 0);
  return {
    path: header.path ?? '',
    size: header.size ?? 0,
    mode: header.mode ?? 0,
    typeKey: String(header.typeKey),
    cksumValid: header.cksumValid,
    nullBlock: header.nullBlock,
  };
}
