import {createHash} from 'node:crypto';
import os from 'node:os';

import type {Client} from 'pg';

/**
 * The ops audit log in dforge_control: every operator action, who, what, when and the outcome.
 * Entries are hash-chained (each hash covers the previous one), so deleting, reordering or editing
 * an entry breaks the chain at that point, and `verifyOpsLog` names where.
 */

export interface OpsEntry {
  readonly action: string;
  readonly target: string;
  readonly outcome: 'ok' | 'failed' | 'waived';
  /** Context for the record. Never a secret. */
  readonly details?: Record<string, unknown>;
  readonly actor?: string;
}

export interface StoredOpsEntry extends Required<OpsEntry> {
  readonly seq: number;
  readonly at: string;
  readonly prevHash: string;
  readonly hash: string;
}

const GENESIS = Buffer.alloc(32);
/** pg_advisory_xact_lock key that serialises appends (the ASCII of "dfopslog" as an int8). */
const APPEND_LOCK = 0x64666f70736c6f67n;

/** Who ran dforge: the login user and host, as an operator reading the log expects. */
export function currentActor(): string {
  const user = process.env.SUDO_USER ?? os.userInfo().username;
  return `${user}@${os.hostname()}`;
}

export async function appendOpsEntry(client: Client, entry: OpsEntry, now: Date = new Date()): Promise<StoredOpsEntry> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [APPEND_LOCK.toString()]);
    const last = await client.query<{seq: string; hash: Buffer}>('SELECT seq, hash FROM ops_log ORDER BY seq DESC LIMIT 1');
    const seq = last.rowCount ? Number(last.rows[0]!.seq) + 1 : 1;
    const prev = last.rowCount ? last.rows[0]!.hash : GENESIS;
    const record = {seq, at: now.toISOString(), actor: entry.actor ?? currentActor(), action: entry.action, target: entry.target, outcome: entry.outcome, details: entry.details ?? {}};
    const hash = chainHash(prev, record);
    await client.query('INSERT INTO ops_log (seq, at, actor, action, target, outcome, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)', [
      seq,
      record.at,
      record.actor,
      record.action,
      record.target,
      record.outcome,
      JSON.stringify(record.details),
      prev,
      hash,
    ]);
    await client.query('COMMIT');
    return {...record, prevHash: prev.toString('hex'), hash: hash.toString('hex')};
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

export interface ChainVerification {
  readonly entries: number;
  readonly intact: boolean;
  /** The first entry whose hash or link does not match, if any. */
  readonly brokenAt?: number;
  readonly reason?: string;
}

export async function verifyOpsLog(client: Client): Promise<ChainVerification> {
  const rows = await client.query<{seq: string; at: Date; actor: string; action: string; target: string; outcome: string; details: Record<string, unknown>; prev_hash: Buffer; hash: Buffer}>(
    'SELECT seq, at, actor, action, target, outcome, details, prev_hash, hash FROM ops_log ORDER BY seq',
  );
  let prev: Buffer = GENESIS;
  let expectedSeq = 1;
  for (const row of rows.rows) {
    const seq = Number(row.seq);
    if (seq !== expectedSeq) return {entries: rows.rowCount ?? 0, intact: false, brokenAt: expectedSeq, reason: `entry ${expectedSeq} is missing`};
    if (!row.prev_hash.equals(prev)) return {entries: rows.rowCount ?? 0, intact: false, brokenAt: seq, reason: `entry ${seq} does not link to entry ${seq - 1}`};
    const record = {seq, at: row.at.toISOString(), actor: row.actor, action: row.action, target: row.target, outcome: row.outcome, details: row.details};
    if (!chainHash(prev, record).equals(row.hash)) return {entries: rows.rowCount ?? 0, intact: false, brokenAt: seq, reason: `entry ${seq} was altered after it was written`};
    prev = row.hash;
    expectedSeq++;
  }
  return {entries: rows.rowCount ?? 0, intact: true};
}

function chainHash(prev: Buffer, record: Record<string, unknown>): Buffer {
  return createHash('sha256').update(prev).update(canonicalJson(record)).digest();
}

/** JSON with sorted keys at every level, so the hash does not depend on key order in jsonb. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The newest entries, oldest first; optionally only those about one tenant. */
export async function readOpsLog(client: Client, options: {limit?: number; tenant?: string} = {}): Promise<StoredOpsEntry[]> {
  const rows = await client.query<{seq: string; at: Date; actor: string; action: string; target: string; outcome: OpsEntry['outcome']; details: Record<string, unknown>; prev_hash: Buffer; hash: Buffer}>(
    `SELECT * FROM (SELECT seq, at, actor, action, target, outcome, details, prev_hash, hash FROM ops_log
       WHERE $1::text IS NULL OR target = 'tenant:' || $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`,
    [options.tenant ?? null, options.limit ?? 1_000_000_000],
  );
  return rows.rows.map((r) => ({seq: Number(r.seq), at: r.at.toISOString(), actor: r.actor, action: r.action, target: r.target, outcome: r.outcome, details: r.details, prevHash: r.prev_hash.toString('hex'), hash: r.hash.toString('hex')}));
}
