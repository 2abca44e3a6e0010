import {createHash, createHmac, randomBytes, timingSafeEqual} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {canonicalJson} from '../audit/canonical-json.js';
import {CURRENT_OPS_LOG_KEY_ID, OpsLogKeys, type OpsLogKeyServices} from '../audit/ops-log-key.js';
import {recordOps} from '../audit/record.js';
import type {ControlPlane} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import type {PostureStatus} from './check.js';
import type {PostureReport} from './service.js';

/**
 * Recorded posture runs: <install>/state/posture/<id>.json, each MAC'd with the ops-log key (under
 * its own context string) and announced by a `posture.run` ops-log entry that names the run and
 * its digest. Editing a stored run breaks its MAC; deleting one leaves its ops-log entry behind.
 */
export interface StoredRun {
  readonly format: 1;
  readonly id: string;
  readonly keyId: string;
  /** Sequence number of the run's `posture.run` entry in the ops log. */
  readonly opsSeq: number;
  readonly report: PostureReport;
  /** Hex HMAC-SHA256 over the canonical JSON of the other fields (docs/formats.md). */
  readonly tag: string;
}

const TAG_CONTEXT = 'dforge posture run v1\0';
const RUN_ID = /^\d{8}T\d{6}Z-[0-9a-f]{8}$/;

export const postureRunsDir = (dir: InstallDir): string => path.join(dir.root, 'state', 'posture');

export async function recordRun(plane: ControlPlane, report: PostureReport): Promise<{id: string; file: string}> {
  const id = `${report.at.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(4).toString('hex')}`;
  const {record: _omit, ...body} = report;
  const digest = createHash('sha256').update(canonicalJson(JSON.parse(JSON.stringify(body)))).digest('hex');
  // The entry first: appending creates the ops-log key on an install that has none yet.
  const entry = await recordOps(plane, {
    action: 'posture.run',
    target: report.tenant ? `tenant:${report.tenant}` : 'install',
    outcome: 'ok',
    details: {run: id, digest, overall: report.overall, score: report.score, coverage: report.coverage, counts: report.counts},
  });
  const key = await new OpsLogKeys(plane.keys).verifierKey(CURRENT_OPS_LOG_KEY_ID);
  if (!entry || !key) throw new UserError('the ops log did not take the posture.run entry, so the run cannot be recorded', {nextSteps: ['Check dforge audit verify, then re-run dforge posture --record.']});
  const run = {format: 1 as const, id, keyId: CURRENT_OPS_LOG_KEY_ID, opsSeq: entry.seq, report: {...body, record: {id, file: path.join(postureRunsDir(plane.keys.dir), `${id}.json`)}}};
  const stored = {...run, tag: tagOf(key, run)};
  await fs.mkdir(postureRunsDir(plane.keys.dir), {recursive: true, mode: 0o700});
  await writeFileAtomic(run.report.record.file, `${JSON.stringify(stored, null, 2)}\n`, {mode: 0o600});
  return run.report.record;
}

function tagOf(key: Buffer, run: Omit<StoredRun, 'tag'>): string {
  // Round-trip through JSON first: the MAC covers exactly what the file holds (no undefined fields).
  return createHmac('sha256', key).update(TAG_CONTEXT).update(canonicalJson(JSON.parse(JSON.stringify(run)))).digest('hex');
}

/** Recorded run ids, oldest first (ids start with their UTC time). */
export async function listRuns(dir: InstallDir): Promise<string[]> {
  const names = await fs.readdir(postureRunsDir(dir)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  return names.filter((n) => n.endsWith('.json') && RUN_ID.test(n.slice(0, -5))).map((n) => n.slice(0, -5)).sort();
}

/** A recorded run, its MAC checked: an altered or foreign file is exit 6. `ref` is a run id or a file path. */
export async function readRun(keys: OpsLogKeyServices, ref: string): Promise<StoredRun> {
  const file = RUN_ID.test(ref) ? path.join(postureRunsDir(keys.dir), `${ref}.json`) : path.resolve(ref);
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`no recorded posture run ${ref} (${err.code ?? err.message})`, {nextSteps: ['List recorded runs with: dforge posture diff --list', 'Record one with: dforge posture --record']});
  });
  const altered = (why: string): VerificationError =>
    new VerificationError(`the recorded posture run ${file} ${why}`, {nextSteps: ['Keep the file for investigation; the ops log has a posture.run entry for every genuine run (dforge audit tail).'], data: {file}});
  let run: StoredRun;
  try {
    run = JSON.parse(text) as StoredRun;
  } catch {
    throw altered('is not valid JSON');
  }
  if (run?.format !== 1 || typeof run.tag !== 'string' || typeof run.keyId !== 'string' || typeof run.report !== 'object' || run.report === null) throw altered('is not a posture run record');
  // The MAC covers the id: an old genuine run copied under a newer name must not pass as that run.
  if (path.basename(file) !== `${run.id}.json`) throw altered(`holds run ${JSON.stringify(run.id)}, not the run its name says`);
  const key = await new OpsLogKeys(keys).verifierKey(run.keyId);
  if (!key) throw altered(`names ops-log key ${JSON.stringify(run.keyId)}, which this install does not have`);
  const {tag, ...body} = run;
  const expected = Buffer.from(tagOf(key, body), 'hex');
  const given = Buffer.from(tag, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw altered('was altered: its MAC does not match');
  return run;
}

export interface StatusChange {
  readonly check: string;
  readonly scope: string;
  readonly title: string;
  readonly from: PostureStatus | null;
  readonly to: PostureStatus | null;
  readonly observed: string | null;
}

export interface PostureDiff {
  readonly from: {readonly id: string; readonly at: string; readonly score: number; readonly coverage: number; readonly overall: string};
  readonly to: {readonly id: string; readonly at: string; readonly score: number; readonly coverage: number; readonly overall: string};
  /** Checks whose status changed, appeared (from null) or disappeared (to null). */
  readonly changes: readonly StatusChange[];
}

/** What changed between two recorded runs: by default the two newest. */
export async function diffRuns(keys: OpsLogKeyServices, refs: readonly string[]): Promise<PostureDiff> {
  let [a, b] = refs;
  if (refs.length < 2) {
    const ids = await listRuns(keys.dir);
    if (refs.length === 1) b = ids.at(-1);
    else [a, b] = ids.slice(-2);
    if (!a || !b || a === b) {
      throw new UserError(`posture diff needs two recorded runs; ${ids.length} ${ids.length === 1 ? 'is' : 'are'} recorded in ${postureRunsDir(keys.dir)}`, {nextSteps: ['Record a run with: dforge posture --record']});
    }
  }
  const [from, to] = [await readRun(keys, a!), await readRun(keys, b!)];
  const key = (c: {id: string; scope: string}): string => `${c.id}\0${c.scope}`;
  const before = new Map(from.report.checks.map((c) => [key(c), c]));
  const after = new Map(to.report.checks.map((c) => [key(c), c]));
  const changes: StatusChange[] = [];
  for (const [k, c] of after) {
    const old = before.get(k);
    if (!old || old.status !== c.status) changes.push({check: c.id, scope: c.scope, title: c.title, from: old?.status ?? null, to: c.status, observed: c.observed});
  }
  for (const [k, c] of before) if (!after.has(k)) changes.push({check: c.id, scope: c.scope, title: c.title, from: c.status, to: null, observed: null});
  const side = (r: StoredRun) => ({id: r.id, at: r.report.at, score: r.report.score, coverage: r.report.coverage, overall: r.report.overall});
  return {from: side(from), to: side(to), changes};
}
