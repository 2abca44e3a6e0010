import {createHash, createHmac, timingSafeEqual} from 'node:crypto';
import os from 'node:os';

import type {Client} from 'pg';

import {VerificationError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';
import {canonicalJson} from './canonical-json.js';
import {anchorFile, readAnchor, writeAnchor, type OpsLogAnchor} from './ops-log-anchor.js';
import {CURRENT_OPS_LOG_KEY_ID, OpsLogKeys, type OpsLogKeyServices} from './ops-log-key.js';

/**
 * The ops audit log in dforge_control: every operator action, who, what, when and the outcome.
 *
 * Entries are chained: each entry's MAC covers the previous one's. The MAC is HMAC-SHA256 under the
 * ops-log key, a sealed secret of the install directory (ops-log-key.ts), so whoever can write to
 * dforge_control but not read the install's secrets (the provisioner role, a DBA) cannot recompute
 * the chain after an edit. The head is also anchored outside the database (ops-log-anchor.ts), so
 * cutting entries off the end is detected too. docs/formats.md has the exact construction; entries
 * written before keyed chains ("legacy", key_id NULL) are plain SHA-256 links, sealed by the first
 * keyed entry.
 */

export type OpsOutcome = 'ok' | 'failed' | 'waived';

export interface OpsEntry {
  readonly action: string;
  readonly target: string;
  readonly outcome: OpsOutcome;
  /** Context for the record. Never a secret. */
  readonly details?: Record<string, unknown>;
  readonly actor?: string;
}

/**
 * Written by an append that found the log disagreeing with the anchor (`tamper`: entries were cut
 * or replaced, and this entry keeps that on the record), or by the re-anchor after
 * `restore --control` (`restore`: the operator rolled the log back on purpose).
 */
export interface ChainBreak {
  readonly kind: 'tamper' | 'restore';
  /** The anchored head the log no longer ends in; null when there was no anchor. */
  readonly anchored: {readonly seq: number; readonly mac: string} | null;
  /** The head the log had when the break was recorded. */
  readonly found: {readonly seq: number; readonly mac: string} | null;
  readonly reason: string;
}

export interface StoredOpsEntry extends Required<OpsEntry> {
  readonly seq: number;
  readonly at: string;
  readonly prevHash: string;
  readonly hash: string;
  /** The ops-log key id, or null for a legacy (unkeyed) entry. */
  readonly keyId: string | null;
  readonly chainBreak: ChainBreak | null;
}

/** The newest entry, as the anchor, a control backup's header and `restore --control` name it. */
export interface OpsLogHead {
  readonly seq: number;
  /** Hex MAC (or legacy hash) of the entry. */
  readonly mac: string;
  readonly keyId: string | null;
}

export interface ChainVerification {
  readonly entries: number;
  readonly intact: boolean;
  /** Entries 1..legacy were written before keyed chains; the first keyed entry seals them. */
  readonly legacy: number;
  readonly keyed: number;
  readonly head?: OpsLogHead;
  /** The anchored head in <install>/state/ops-log-head.json, when there is one. */
  readonly anchor?: {readonly seq: number; readonly at: string; readonly file: string};
  /** Entries past the anchor: an append that committed but was killed before it moved the anchor. */
  readonly unanchored: number;
  /** Entries written by `restore --control`, each rolling the log back on purpose. */
  readonly restores: ReadonlyArray<{readonly seq: number; readonly at: string; readonly previousAnchor: number | null}>;
  /** The first entry that cannot be trusted, if any. */
  readonly brokenAt?: number;
  readonly reason?: string;
  /** That entry as it is stored now (it may be the altered one), when it exists. */
  readonly brokenEntry?: {readonly seq: number; readonly at: string; readonly actor: string; readonly action: string; readonly target: string};
}

const GENESIS = Buffer.alloc(32);
/** pg_advisory_lock key that serialises appends (the ASCII of "dfopslog" as an int8). */
const APPEND_LOCK = 0x64666f70736c6f67n;
const MAC_CONTEXT = 'dforge ops-log entry v1\0';

/** Who ran dforge: the login user and host, as an operator reading the log expects. */
export function currentActor(): string {
  const user = process.env.SUDO_USER ?? os.userInfo().username;
  return `${user}@${os.hostname()}`;
}

interface Row {
  seq: string;
  at: Date;
  actor: string;
  action: string;
  target: string;
  outcome: OpsOutcome;
  details: Record<string, unknown>;
  prev_hash: Buffer;
  hash: Buffer;
  key_id: string | null;
  chain_break: ChainBreak | null;
}
const COLUMNS = 'seq, at, actor, action, target, outcome, details, prev_hash, hash, key_id, chain_break';

/**
 * The ops log of one install: its key and its anchor live in the install directory, its entries
 * in dforge_control (the client each call is given).
 */
export class OpsLog {
  private readonly keys: OpsLogKeys;
  /**
   * Appends within this process, one at a time: a session advisory lock is re-entrant for its own
   * session, so two concurrent appends on one connection would both pass it and interleave.
   */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly services: OpsLogKeyServices) {
    this.keys = new OpsLogKeys(services);
  }

  get anchorFile(): string {
    return anchorFile(this.services.dir);
  }

  /**
   * Appends one entry. Appends from every process are serialised by a session advisory lock held
   * until the anchor file names the new head: commit first, anchor second, so a kill in between
   * leaves the log one entry ahead of the anchor (which verify accepts, as every such entry carries
   * a valid MAC), never an anchor ahead of the log (which is what a cut tail looks like).
   * A log that disagrees with the anchor is still appended to, so that dforge keeps working, but
   * the entry records the break in its MAC'd chain_break field, and verify fails on it for good.
   */
  async append(client: Client, entry: OpsEntry, now: Date = new Date()): Promise<StoredOpsEntry> {
    return this.locked(client, async () => {
      const key = await this.writerKey(client);
      const anchor = await readAnchor(this.services.dir, this.keys);
      const check = await this.checkAgainstAnchor(client, anchor);
      if (!anchor) {
        // Anchor the head as it is before this install's first entry: a kill after the commit below
        // then leaves the log one entry past an anchor (which verify accepts), never keyed entries
        // without any anchor (which verify cannot tell from a deleted anchor).
        await writeAnchor(this.services.dir, key, {seq: check.found?.seq ?? 0, mac: check.found?.mac ?? GENESIS.toString('hex'), keyId: CURRENT_OPS_LOG_KEY_ID, at: now.toISOString()});
      }
      const chainBreak = check.failure ? {kind: 'tamper' as const, anchored: check.failure.anchored, found: check.found, reason: check.failure.reason} : null;
      return this.insert(client, key, entry, now, chainBreak);
    });
  }

  /**
   * After `restore --control` has replaced dforge_control: checks that the restored log is intact
   * (every MAC and link) and, when the backup's header named a head, that it contains that entry;
   * then appends a `restore.control` entry that names the anchor it replaces, and anchors it.
   * A log that fails either check is not the one the backup was taken of: exit 6, nothing written.
   */
  async reanchorAfterRestore(client: Client, restore: {backupId: string; backupHead?: OpsLogHead; actor?: string}, now: Date = new Date()): Promise<StoredOpsEntry> {
    return this.locked(client, async () => {
      const key = await this.writerKey(client);
      const rows = await readRows(client, 1);
      const walk = await this.walk(rows, GENESIS, 1);
      if (walk.failure) throw restoredLogError(`the restored ops log is not intact: ${walk.failure.reason}`, walk.failure.seq);
      if (restore.backupHead) {
        const at = rows[restore.backupHead.seq - 1];
        if (!at || at.hash.toString('hex') !== restore.backupHead.mac) {
          throw restoredLogError(`the restored ops log does not contain entry ${restore.backupHead.seq} as backup ${restore.backupId} recorded it`, restore.backupHead.seq);
        }
      }
      const anchor = await readAnchor(this.services.dir, this.keys);
      const last = rows.at(-1);
      const chainBreak: ChainBreak = {
        kind: 'restore',
        anchored: anchor ? {seq: anchor.seq, mac: anchor.mac} : null,
        found: last ? {seq: Number(last.seq), mac: last.hash.toString('hex')} : null,
        reason: `dforge_control was restored from backup ${restore.backupId}`,
      };
      return this.insert(client, key, {action: 'restore.control', target: 'control', outcome: 'ok', details: {backupId: restore.backupId}, actor: restore.actor}, now, chainBreak);
    });
  }

  /** Checks every entry, then the head against the anchor. Never writes. */
  async verify(client: Client): Promise<ChainVerification> {
    // The anchor first: it only ever names committed entries, so rows read after it include the
    // anchored one even while other processes append, unless someone deleted it.
    const anchor = await readAnchor(this.services.dir, this.keys);
    const rows = await readRows(client, 1);
    const walk = await this.walk(rows, GENESIS, 1);
    const last = rows.at(-1);
    const base = {
      entries: rows.length,
      legacy: walk.legacy,
      keyed: walk.keyed,
      ...(last ? {head: headOf(last)} : {}),
      ...(anchor ? {anchor: {seq: anchor.seq, at: anchor.at, file: this.anchorFile}} : {}),
      unanchored: anchor ? Math.max(0, rows.length - anchor.seq) : 0,
      restores: walk.restores,
    };
    const broken = (seq: number, reason: string): ChainVerification => {
      const row = rows.find((r) => Number(r.seq) === seq);
      const brokenEntry = row ? {seq, at: row.at.toISOString(), actor: row.actor, action: row.action, target: row.target} : undefined;
      return {...base, intact: false, brokenAt: seq, reason, ...(brokenEntry ? {brokenEntry} : {})};
    };
    if (walk.failure) return broken(walk.failure.seq, walk.failure.reason);
    const anchored = anchor && anchorMismatch(rows[anchor.seq - 1], rows.length, anchor);
    if (anchored) return broken(anchored.seq, anchored.reason);
    if (walk.keyed === 0 && walk.legacy > 0) {
      return broken(1, `none of the ${walk.legacy} entries is keyed: they were written before the ops log was keyed, and anyone who can write to dforge_control could have rewritten them`);
    }
    if (!anchor && walk.keyed > 0) {
      return broken(rows.length, `the log has keyed entries but there is no anchor at ${this.anchorFile}, so entries cut from its end could not be detected`);
    }
    return {...base, intact: true};
  }

  private async writerKey(client: Client): Promise<Buffer> {
    return this.keys.writerKey(async () => ((await client.query('SELECT 1 FROM ops_log WHERE key_id IS NOT NULL LIMIT 1')).rowCount ?? 0) > 0);
  }

  private locked<T>(client: Client, fn: () => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      // Session level, not transaction level: it must cover the anchor write after COMMIT.
      await client.query('SELECT pg_advisory_lock($1)', [APPEND_LOCK.toString()]);
      try {
        return await fn();
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [APPEND_LOCK.toString()]).catch(() => undefined);
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Whether the log still ends in what the anchor names: the anchored entry is there, unchanged,
   * and every later entry chains from it under the key. Without an anchor (first keyed append, or
   * an install directory that never wrote one), the whole log must verify.
   */
  private async checkAgainstAnchor(client: Client, anchor: OpsLogAnchor | undefined): Promise<{found: ChainBreak['found']; failure?: {anchored: ChainBreak['anchored']; reason: string}}> {
    const from = anchor?.seq ?? 0;
    const rows = await readRows(client, from);
    // The log's own head: when entries were cut below the anchor, none of `rows` is it.
    const head = await opsLogHead(client);
    const found = head ? {seq: head.seq, mac: head.mac} : null;
    const anchored = anchor ? {seq: anchor.seq, mac: anchor.mac} : null;
    if (from === 0) {
      const walk = await this.walk(rows, GENESIS, 1);
      return walk.failure ? {found, failure: {anchored, reason: walk.failure.reason}} : {found};
    }
    const mismatch = anchorMismatch(rows[0] && Number(rows[0].seq) === from ? rows[0] : undefined, found?.seq ?? 0, anchor!);
    if (mismatch) return {found, failure: {anchored, reason: mismatch.reason}};
    const walk = await this.walk(rows.slice(1), rows[0]!.hash, from + 1, rows[0]!.key_id !== null);
    return walk.failure ? {found, failure: {anchored, reason: walk.failure.reason}} : {found};
  }

  private async insert(client: Client, key: Buffer, entry: OpsEntry, now: Date, chainBreak: ChainBreak | null): Promise<StoredOpsEntry> {
    let stored: StoredOpsEntry;
    await client.query('BEGIN');
    try {
      const last = await client.query<{seq: string; hash: Buffer}>('SELECT seq, hash FROM ops_log ORDER BY seq DESC LIMIT 1');
      const seq = last.rowCount ? Number(last.rows[0]!.seq) + 1 : 1;
      const prev = last.rowCount ? last.rows[0]!.hash : GENESIS;
      // What the MAC covers is what a reader gets back from jsonb: no undefined, no key order.
      const details = JSON.parse(JSON.stringify(entry.details ?? {})) as Record<string, unknown>;
      const record = {seq, at: now.toISOString(), actor: entry.actor ?? currentActor(), action: entry.action, target: entry.target, outcome: entry.outcome, details};
      const mac = entryMac(key, prev, {...record, keyId: CURRENT_OPS_LOG_KEY_ID, chainBreak});
      await client.query(`INSERT INTO ops_log (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`, [
        seq,
        record.at,
        record.actor,
        record.action,
        record.target,
        record.outcome,
        JSON.stringify(details),
        prev,
        mac,
        CURRENT_OPS_LOG_KEY_ID,
        chainBreak === null ? null : JSON.stringify(chainBreak),
      ]);
      await client.query('COMMIT');
      crashPoint('ops-log.entry-committed');
      stored = {...record, prevHash: prev.toString('hex'), hash: mac.toString('hex'), keyId: CURRENT_OPS_LOG_KEY_ID, chainBreak};
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    await writeAnchor(this.services.dir, key, {seq: stored.seq, mac: stored.hash, keyId: CURRENT_OPS_LOG_KEY_ID, at: stored.at});
    crashPoint('ops-log.head-anchored');
    return stored;
  }

  /**
   * Checks links and MACs from `prev`/`firstSeq` on. `afterKeyed` says the entries before were
   * keyed already (so a legacy entry here is a forgery). Reports the first failure, counts, and
   * every restore; a `tamper` chain break is a failure of the entry that carries it.
   */
  private async walk(rows: readonly Row[], prev: Buffer, firstSeq: number, afterKeyed = false): Promise<{legacy: number; keyed: number; restores: ChainVerification['restores']; failure?: {seq: number; reason: string}}> {
    let legacy = 0;
    let keyed = 0;
    let seenKeyed = afterKeyed;
    const restores: Array<ChainVerification['restores'][number]> = [];
    const result = (failure?: {seq: number; reason: string}) => ({legacy, keyed, restores, ...(failure ? {failure} : {})});
    let expected = firstSeq;
    for (const row of rows) {
      const seq = Number(row.seq);
      if (seq !== expected) return result({seq: expected, reason: `entry ${expected} is missing`});
      if (!row.prev_hash.equals(prev)) return result({seq, reason: `entry ${seq} does not link to entry ${seq - 1}`});
      const record = {seq, at: row.at.toISOString(), actor: row.actor, action: row.action, target: row.target, outcome: row.outcome, details: row.details};
      if (row.key_id === null) {
        if (seenKeyed) return result({seq, reason: `entry ${seq} is not keyed but follows keyed entries, so it was not written by dforge`});
        if (!legacyHash(prev, record).equals(row.hash)) return result({seq, reason: `entry ${seq} was altered after it was written`});
        legacy++;
      } else {
        const key = await this.keys.verifierKey(row.key_id);
        if (!key) return result({seq, reason: `entry ${seq} is keyed with ops-log key ${JSON.stringify(row.key_id)}, which this install does not have`});
        const mac = entryMac(key, prev, {...record, keyId: row.key_id, chainBreak: row.chain_break});
        if (mac.length !== row.hash.length || !timingSafeEqual(mac, row.hash)) return result({seq, reason: `entry ${seq} was altered after it was written`});
        if (row.chain_break?.kind === 'tamper') {
          const cut = row.chain_break.anchored ? `the anchor named entry ${row.chain_break.anchored.seq}` : 'there was no anchor';
          const end = row.chain_break.found ? `the log ended at entry ${row.chain_break.found.seq}` : 'the log was empty';
          return result({seq, reason: `entry ${seq} records that the log had been tampered with before it was written (${cut}, ${end}: ${row.chain_break.reason})`});
        }
        if (row.chain_break?.kind === 'restore') restores.push({seq, at: record.at, previousAnchor: row.chain_break.anchored?.seq ?? null});
        seenKeyed = true;
        keyed++;
      }
      prev = row.hash;
      expected++;
    }
    return result();
  }
}

/** The newest entry of the log, or undefined for an empty log. Reads only; the key is not needed. */
export async function opsLogHead(client: Client): Promise<OpsLogHead | undefined> {
  const rows = await client.query<Row>(`SELECT ${COLUMNS} FROM ops_log ORDER BY seq DESC LIMIT 1`);
  return rows.rowCount ? headOf(rows.rows[0]!) : undefined;
}

/**
 * How the log disagrees with the anchor, if it does: `atAnchor` is the log's entry with the
 * anchored seq, `lastSeq` the log's newest. Entries past the anchored one are allowed: they are
 * what a kill between COMMIT and the anchor write leaves, and the walk checks their MACs.
 */
function anchorMismatch(atAnchor: Row | undefined, lastSeq: number, anchor: OpsLogAnchor): {seq: number; reason: string} | undefined {
  // Written before this install's first entry into an empty log: there is nothing to compare.
  if (anchor.seq === 0) return undefined;
  const written = `anchored ${anchor.at}`;
  if (!atAnchor && lastSeq < anchor.seq) {
    return {
      seq: lastSeq + 1,
      reason: lastSeq === 0 ? `the log is empty, but the anchor records entry ${anchor.seq} (${written}): every entry was deleted` : `the log ends at entry ${lastSeq}, but the anchor records entry ${anchor.seq} (${written}): ${lastSeq + 1 === anchor.seq ? `entry ${anchor.seq} was` : `entries ${lastSeq + 1} to ${anchor.seq} were`} deleted`,
    };
  }
  if (!atAnchor) return {seq: anchor.seq, reason: `entry ${anchor.seq} is missing (the anchor records it, ${written})`};
  if (atAnchor.hash.toString('hex') !== anchor.mac) return {seq: anchor.seq, reason: `entry ${anchor.seq} is not the entry the anchor records (${written}): the log was rewritten`};
  return undefined;
}

function restoredLogError(message: string, seq: number): VerificationError {
  return new VerificationError(message, {
    nextSteps: ['This backup of dforge_control does not hold the ops log it was taken with. Restore another backup, and keep this one for investigation.'],
    data: {brokenAt: seq},
  });
}

async function readRows(client: Client, fromSeq: number): Promise<Row[]> {
  return (await client.query<Row>(`SELECT ${COLUMNS} FROM ops_log WHERE seq >= $1 ORDER BY seq`, [fromSeq])).rows;
}

function headOf(row: Row): OpsLogHead {
  return {seq: Number(row.seq), mac: row.hash.toString('hex'), keyId: row.key_id};
}

function entryMac(key: Buffer, prev: Buffer, record: Record<string, unknown>): Buffer {
  return createHmac('sha256', key).update(MAC_CONTEXT).update(prev).update(canonicalJson(record)).digest();
}

function legacyHash(prev: Buffer, record: Record<string, unknown>): Buffer {
  return createHash('sha256').update(prev).update(canonicalJson(record)).digest();
}

/** The newest entries, oldest first; optionally only those about one tenant. */
export async function readOpsLog(client: Client, options: {limit?: number; tenant?: string} = {}): Promise<StoredOpsEntry[]> {
  const rows = await client.query<Row>(
    `SELECT * FROM (SELECT ${COLUMNS} FROM ops_log
       WHERE $1::text IS NULL OR target = 'tenant:' || $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`,
    [options.tenant ?? null, options.limit ?? 1_000_000_000],
  );
  return rows.rows.map((r) => ({
    seq: Number(r.seq),
    at: r.at.toISOString(),
    actor: r.actor,
    action: r.action,
    target: r.target,
    outcome: r.outcome,
    details: r.details,
    prevHash: r.prev_hash.toString('hex'),
    hash: r.hash.toString('hex'),
    keyId: r.key_id,
    chainBreak: r.chain_break,
  }));
}
