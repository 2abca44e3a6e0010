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

/**
 * The most parts a split bundle has: part names carry three digits (F.001 … F.999) and
 * partsIndexSchema allows 999 entries, so a 1000th part could be written but never verified.
 */
export const MAX_PARTS = 999;

/** A part smaller than this is a typo, not a plan. */
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

/**
 * Refuses, before anything is written, a split whose estimate needs more than MAX_PARTS parts,
 * naming a part size that fits (with a margin, since the estimate is approximate).
 */
export function checkPartCount(estimatedBytes: number, partBytes: number): void {
  if (Math.ceil(estimatedBytes / partBytes) <= MAX_PARTS) return;
  const MiB = 1024 ** 2;
  const suggested = Math.ceil((estimatedBytes * 1.1) / MAX_PARTS / MiB);
  const text = suggested % 1024 === 0 ? `${suggested / 1024}G` : `${suggested}M`;
  throw new UsageError(`parts of ${partBytes} bytes would cut about ${estimatedBytes} bytes into more than ${MAX_PARTS} parts, and a split bundle has at most ${MAX_PARTS}`, {
    nextSteps: [`Pass a larger part size, e.g. --split ${text} or larger.`],
    data: {estimatedBytes, partBytes, maxParts: MAX_PARTS},
  });
}

function roundDown(bytes: number): number {
  return Math.floor(bytes / BLOCK) * BLOCK;
}

function invalid(text: string, why: string): UsageError {
  return new UsageError(`--split ${JSON.stringify(text)} is not usable: ${why}`, {
    nextSteps: ['Pass a size such as 4G, 700M or 1073741824 (bytes), or dvd for 4.7 GB single-layer DVDs.'],
  });
}
