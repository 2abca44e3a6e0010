import {UsageError} from '../errors.js';
import {BLOCK} from './tar-blocks.js';

/**
 * `--split` sizes. Every part but the last is a whole number of tar blocks, so a part boundary
 * never splits a 512-byte block and `cat F.0* > F` is the unsplit bundle.
 */

/**
 * A single-layer DVD holds 4,700,000,000 bytes; ISO 9660/UDF file-system structures take a few
 * MB of that, so a part is 4,690,000,000 bytes rounded down to whole blocks: 4,689,999,872.
 */
export const DVD_PART_BYTES = roundDown(4_690_000_000);

/** A part smaller than this is a typo, not a plan (999 parts at most, see partsIndexSchema). */
const MIN_PART_BYTES = 1024 * 1024;

const UNITS: Record<string, number> = {'': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4};

/** Parses `4G`, `700M`, `dvd` or a byte count; binary units (G = 2^30), rounded down to whole 512-byte blocks. */
export function parseSplitSize(text: string): number {
  const value = text.trim();
  if (value.toLowerCase() === 'dvd') return DVD_PART_BYTES;
  const match = /^([0-9]+)([KMGT]?)(i?B)?$/i.exec(value);
  if (!match) throw invalid(text, 'it is not a size');
  const bytes = roundDown(Number(match[1]) * UNITS[match[2]!.toUpperCase()]!);
  if (!Number.isSafeInteger(bytes)) throw invalid(text, 'it is too large');
  if (bytes < MIN_PART_BYTES) throw invalid(text, `a part must be at least ${MIN_PART_BYTES} bytes (1M)`);
  return bytes;
}

function roundDown(bytes: number): number {
  return Math.floor(bytes / BLOCK) * BLOCK;
}

function invalid(text: string, why: string): UsageError {
  return new UsageError(`--split ${JSON.stringify(text)} is not usable: ${why}`, {
    nextSteps: ['Pass a size such as 4G, 700M or 1073741824 (bytes), or dvd for 4.7 GB single-layer DVDs.'],
  });
}
