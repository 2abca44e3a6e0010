import {createHash} from 'node:crypto';
import {pipeline, Transform, type Readable} from 'node:stream';

import {VerificationError} from '../errors.js';
import {BLOBS_PREFIX, BUNDLE_JSON, BUNDLE_SIGNATURE, EXECUTABLE, LIMITS, OCI_INDEX, OCI_LAYOUT, SBOM_PREFIX, TEMPLATES_PREFIX, type BundleEntry, type BundleManifest} from './manifest.js';
import {readRange} from './source.js';
import {entrySpan} from './tar-blocks.js';
import type {VerifiedBundle} from './verified-bundle.js';

/** An entry with where its header and content sit in the logical bundle, computed from bundle.json alone. */
export interface LocatedEntry extends BundleEntry {
  headerOffset: number;
  contentOffset: number;
}

export function locateEntries(manifest: BundleManifest): LocatedEntry[] {
  let offset = 0;
  return manifest.entries.map((entry) => {
    const span = entrySpan(offset, entry.size);
    const located = {...entry, headerOffset: offset, contentOffset: span.contentOffset};
    offset = span.next;
    return located;
  });
}

const FIXED_NAMES = new Set([BUNDLE_JSON, BUNDLE_SIGNATURE, OCI_LAYOUT, OCI_INDEX, EXECUTABLE]);
const PREFIXES = [BLOBS_PREFIX, SBOM_PREFIX, TEMPLATES_PREFIX];

/**
 * The one name rule, applied to every tar header by verify and again to every file by extract,
 * so a hostile name is refused before anything acts on the bundle. Returns why the name is
 * refused, or null.
 */
export function entryNameProblem(name: string): string | null {
  if (name.length === 0) return 'the name is empty';
  if (Buffer.byteLength(name) > LIMITS.pathBytes) return `the name is longer than ${LIMITS.pathBytes} bytes`;
  if (name.includes('\0')) return 'the name contains a NUL byte';
  if (name.includes('\\')) return 'the name contains a backslash';
  if (name.startsWith('/')) return 'the name is an absolute path';
  if (/^[A-Za-z]:/.test(name)) return 'the name starts with a drive letter';
  if (/[\u0000-\u001F\u007F]/.test(name)) return 'the name contains a control character';
  // ustar names are ASCII and the writer makes no other: anything else is hostile.
  if (/[^\u0020-\u007E]/.test(name)) return 'the name contains a character outside printable ASCII';
  const segments = name.split('/');
  if (segments.some((s) => s === '..')) return "the name contains '..'";
  if (segments.some((s) => s === '' || s === '.')) return "the name has an empty or '.' component";
  if (segments.length > LIMITS.depth + 1) return `the name is deeper than ${LIMITS.depth} directories`;
  if (!FIXED_NAMES.has(name) && !PREFIXES.some((p) => name.startsWith(p))) return 'the name is not one a dforge bundle has';
  return null;
}

/** Two names that one file system may treat as one file (Unicode NFC, case folding) share this key. */
export const collisionKey = (name: string): string => name.normalize('NFC').toLowerCase().normalize('NFC');

/**
 * The content of a verified entry, read again and hashed again. The last chunk is held back
 * until the hash matches, so a consumer (docker load, a registry upload, a file write) never
 * receives the complete bytes of an entry that changed after verification.
 */
export function openVerifiedEntry(verified: VerifiedBundle, entry: LocatedEntry): Readable {
  const hash = createHash('sha256');
  let held: Buffer | null = null;
  let seen = 0;
  const check = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      seen += chunk.length;
      const previous = held;
      held = chunk;
      done(null, previous ?? undefined);
    },
    flush(done) {
      const actual = hash.digest('hex');
      if (seen !== entry.size || actual !== entry.sha256) {
        done(
          new VerificationError(`bundle entry ${entry.path} changed after it was verified (sha256 ${actual}, bundle.json says ${entry.sha256})`, {
            nextSteps: ['Something is writing to the bundle file. Stop it, get a fresh copy of the bundle, and run dforge bundle verify again.'],
            data: {reason: 'entry-changed', entry: entry.path},
          }),
        );
        return;
      }
      done(null, held ?? undefined);
    },
  });
  // pipeline, not pipe: a consumer that abandons the stream (a failed upload attempt, an aborted
  // load) destroys `check`, and that closes the file read too instead of leaving it open.
  // Errors reach the consumer through `check`; the callback only keeps them from being unhandled.
  return pipeline(readRange(verified.source, entry.contentOffset, entry.size), check, () => {});
}
