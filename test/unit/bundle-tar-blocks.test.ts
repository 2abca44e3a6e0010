import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {describe, expect, it} from 'vitest';

import {BLOCK, OCTAL_SIZE_MAX, decodeEntryHeader, encodeEntryHeader} from '../../src/bundle/tar-blocks.js';

const mtime = new Date('2024-05-01T12:00:00.900Z');
const GiB = 1024 ** 3;

describe('bundle tar headers', () => {
  it('an entry of 9 GiB is written in base-256 and decodes to the same size with a valid checksum', () => {
    const size = 9 * GiB + 123;
    const block = encodeEntryHeader({path: 'oci/blobs/sha256/' + 'a'.repeat(64), size, mode: 0o644, mtime});
    expect(block.length).toBe(BLOCK);
    expect(block[124]).toBe(0x80);
    const decoded = decodeEntryHeader(block);
    expect(decoded).toMatchObject({path: 'oci/blobs/sha256/' + 'a'.repeat(64), size, mode: 0o644, typeKey: '0', cksumValid: true, nullBlock: false});
  });

  it('GNU tar reads the base-256 size as written', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-tarblocks-'));
    try {
      const file = path.join(dir, 'h.tar');
      // The header alone: tar lists the entry, then reports the missing content.
      await fs.writeFile(file, encodeEntryHeader({path: 'big', size: 9 * GiB, mode: 0o644, mtime}));
      let listing: string;
      try {
        listing = execFileSync('tar', ['-tvf', file], {stdio: ['ignore', 'pipe', 'pipe']}).toString();
      } catch (err) {
        listing = String((err as {stdout?: Buffer}).stdout ?? '');
      }
      expect(listing).toContain(String(9 * GiB));
      expect(listing).toContain('big');
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });

  it('sizes up to the octal limit stay octal', () => {
    const block = encodeEntryHeader({path: 'x', size: OCTAL_SIZE_MAX, mode: 0o644, mtime});
    expect(block.subarray(124, 136).toString('latin1')).toBe('77777777777\0');
    expect(decodeEntryHeader(block).size).toBe(OCTAL_SIZE_MAX);
  });

  it('refuses a name that needs pax, naming it, and an impossible size', () => {
    const long = 'templates/' + 'x'.repeat(300);
    expect(() => encodeEntryHeader({path: long, size: 1, mode: 0o644, mtime})).toThrow(/does not fit a ustar header/);
    expect(() => encodeEntryHeader({path: 'templates/é', size: 1, mode: 0o644, mtime})).toThrow(/templates\/é/);
    expect(() => encodeEntryHeader({path: 'x', size: 2 ** 60, mode: 0o644, mtime})).toThrow(/impossible size/);
  });
});
