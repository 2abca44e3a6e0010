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

/** One 512-byte ustar header for a regular file; a path that would need pax is refused. */
export function encodeEntryHeader(entry: EntryHeader): Buffer {
  const header = new Header({
    path: entry.path,
    mode: entry.mode,
    uid: 0,
    gid: 0,
    uname: '',
    gname: '',
    size: entry.size,
    mtime: new Date(Math.floor(entry.mtime.getTime() / 1000) * 1000),
    type: 'File',
  });
  const block = Buffer.alloc(BLOCK);
  if (header.encode(block, 0)) throw new Error(`bundle entry ${JSON.stringify(entry.path)} does not fit a ustar header (at most 255 bytes, split at a slash)`);
  return block;
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
