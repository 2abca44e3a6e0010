import {createReadStream, promises as fs} from 'node:fs';
import path from 'node:path';
import {PassThrough, type Readable} from 'node:stream';
import {pipeline} from 'node:stream/promises';

import {UserError, VerificationError} from '../errors.js';
import {LIMITS, parsePartsIndex, partName, partsIndexFile, type PartsIndex} from './manifest.js';

/**
 * A bundle as bytes on disk: one file, or the parts of a split bundle read as their logical
 * concatenation. Nothing here is trusted yet: verify.ts checks parts.json's signature and every
 * part's size and hash before anything acts on the bytes.
 */
export interface BundleSource {
  file: string;
  parts: ReadonlyArray<{path: string; size: number}>;
  partsIndex?: {index: PartsIndex; bytes: Buffer; signature: Buffer | null};
  totalBytes: number;
}

const PARTS_SUFFIX = '.parts.json';

export async function openBundleSource(file: string): Promise<BundleSource> {
  const bundleFile = file.endsWith(PARTS_SUFFIX) ? file.slice(0, -PARTS_SUFFIX.length) : file;
  const indexFile = partsIndexFile(bundleFile);
  const single = file.endsWith(PARTS_SUFFIX) ? undefined : await fs.stat(file).catch(() => undefined);
  if (single?.isFile()) return {file, parts: [{path: file, size: single.size}], totalBytes: single.size};
  const indexStat = await fs.stat(indexFile).catch(() => undefined);
  if (indexStat === undefined) {
    throw new UserError(`there is no bundle at ${file} (neither the file nor a split bundle's ${path.basename(indexFile)})`, {
      nextSteps: ['Pass the bundle file, or for a split bundle the F.parts.json beside its parts F.001, F.002, …'],
      data: {file},
    });
  }
  if (indexStat.size > LIMITS.manifestBytes) throw new VerificationError(`${indexFile} is ${indexStat.size} bytes, over the ${LIMITS.manifestBytes}-byte limit`, {nextSteps: ['Do not use this bundle; get it again from whoever built it.'], data: {reason: 'parts', part: indexFile}});
  const bytes = await fs.readFile(indexFile);
  const signature = await fs.readFile(`${indexFile}.sig`).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  // Parsed here only to find the parts; verify.ts checks the signature over these same bytes before trusting a size or hash.
  const index = parsePartsIndex(bytes, path.basename(indexFile));
  const dir = path.dirname(indexFile);
  const base = path.basename(bundleFile);
  const parts: Array<{path: string; size: number}> = [];
  for (const [i, part] of index.parts.entries()) {
    const expected = partName(base, i);
    if (part.name !== expected) {
      throw new VerificationError(`${path.basename(indexFile)} lists part ${i + 1} as ${part.name}, expected ${expected}`, {nextSteps: ['Do not use this bundle; get it again from whoever built it.'], data: {reason: 'parts', part: part.name}});
    }
    const partPath = path.join(dir, part.name);
    const stat = await fs.stat(partPath).catch(() => undefined);
    if (!stat?.isFile()) {
      throw new VerificationError(`part ${part.name} of the split bundle is missing (expected at ${partPath})`, {
        nextSteps: [`Copy ${part.name} next to ${path.basename(indexFile)} (all ${index.parts.length} parts are needed), then run dforge bundle verify again.`],
        data: {reason: 'part-missing', part: part.name},
      });
    }
    parts.push({path: partPath, size: stat.size});
  }
  return {file: bundleFile, parts, partsIndex: {index, bytes, signature}, totalBytes: parts.reduce((n, p) => n + p.size, 0)};
}

/** A byte range of the logical concatenation of the parts, streamed part by part. */
export function readRange(source: BundleSource, offset: number, length: number): Readable {
  const out = new PassThrough({highWaterMark: 1024 * 1024});
  void (async () => {
    let start = offset;
    let left = length;
    let partStart = 0;
    for (const part of source.parts) {
      if (left === 0) break;
      const partEnd = partStart + part.size;
      if (start < partEnd) {
        const take = Math.min(left, partEnd - start);
        await pipeline(createReadStream(part.path, {start: start - partStart, end: start - partStart + take - 1, highWaterMark: 1024 * 1024}), out, {end: false});
        start += take;
        left -= take;
      }
      partStart = partEnd;
    }
    if (left > 0) throw new VerificationError(`the bundle ends ${left} bytes before offset ${offset + length}`, {nextSteps: ['Do not use this bundle; get it again from whoever built it.'], data: {reason: 'truncated', file: source.file}});
    out.end();
  })().catch((err: unknown) => out.destroy(err as Error));
  return out;
}
