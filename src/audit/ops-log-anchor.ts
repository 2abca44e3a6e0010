import {createHmac, timingSafeEqual} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {VerificationError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {canonicalJson} from './canonical-json.js';

/**
 * The ops log's head, anchored outside dforge_control: <install>/state/ops-log-head.json, MAC'd
 * with the ops-log key. Whoever can write to dforge_control cannot move it, so cutting entries off
 * the end of the log (which leaves a perfectly linked, shorter chain) shows as a log that ends
 * before the anchored entry.
 */
export interface OpsLogAnchor {
  readonly format: 1;
  readonly seq: number;
  /** Hex MAC of entry `seq`; seq 0 (zeros) anchors an empty log, before this install's first entry. */
  readonly mac: string;
  readonly keyId: string;
  /** When the anchor was written (the entry's time). */
  readonly at: string;
  /** Hex HMAC-SHA256 over the other fields (docs/formats.md). */
  readonly tag: string;
}

const TAG_CONTEXT = 'dforge ops-log anchor v1\0';

export const anchorFile = (dir: InstallDir): string => path.join(dir.root, 'state', 'ops-log-head.json');

/** The anchor, its tag checked; undefined if there is none. An altered anchor is exit 6. */
export async function readAnchor(dir: InstallDir, keys: {verifierKey(id: string): Promise<Buffer | undefined>}): Promise<OpsLogAnchor | undefined> {
  const file = anchorFile(dir);
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (text === undefined) return undefined;
  const altered = (why: string): VerificationError =>
    new VerificationError(`the ops-log anchor ${file} ${why}`, {
      nextSteps: [`Restore ${file} from a backup of the install directory, or find out who changed it; then run dforge audit verify again.`],
      data: {file},
    });
  let anchor: OpsLogAnchor;
  try {
    anchor = JSON.parse(text) as OpsLogAnchor;
  } catch {
    throw altered('is not valid JSON');
  }
  if (anchor.format !== 1 || !Number.isSafeInteger(anchor.seq) || anchor.seq < 0 || typeof anchor.mac !== 'string' || typeof anchor.keyId !== 'string' || typeof anchor.at !== 'string' || typeof anchor.tag !== 'string') {
    throw altered('is not an ops-log anchor');
  }
  const key = await keys.verifierKey(anchor.keyId);
  if (!key) throw altered(`names ops-log key ${JSON.stringify(anchor.keyId)}, which this install does not have`);
  const expected = anchorTag(key, anchor);
  const given = Buffer.from(anchor.tag, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw altered('was altered: its MAC does not match');
  return anchor;
}

/** Replaces the anchor atomically; called with the append lock held, after the entry committed. */
export async function writeAnchor(dir: InstallDir, key: Buffer, head: Omit<OpsLogAnchor, 'format' | 'tag'>): Promise<void> {
  const file = anchorFile(dir);
  await fs.mkdir(path.dirname(file), {recursive: true, mode: 0o700});
  const body = {format: 1 as const, seq: head.seq, mac: head.mac, keyId: head.keyId, at: head.at};
  await writeFileAtomic(file, `${JSON.stringify({...body, tag: anchorTag(key, body).toString('hex')}, null, 2)}\n`, {mode: 0o600});
}

function anchorTag(key: Buffer, anchor: Omit<OpsLogAnchor, 'tag'>): Buffer {
  const {format, seq, mac, keyId, at} = anchor;
  return createHmac('sha256', key).update(TAG_CONTEXT).update(canonicalJson({format, seq, mac, keyId, at})).digest();
}
