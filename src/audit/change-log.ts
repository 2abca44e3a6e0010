import type {Client, Notification} from 'pg';

import {usingControlPlane} from '../control/plane.js';
import {operatorRegionOf} from '../config/schema.js';
import {enforceRegion, type CrossRegionApproval} from '../residency/policy.js';
import {UsageError, UserError, VerificationError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {connectTenantSession} from '../tenants/tenant-session.js';
import {terminalSafe} from '../ui/terminal-safe.js';
import {formatTime} from '../ui/time.js';

/**
 * A tenant's change log (audit.change_log, src/tenants/module-sql.ts) as an operator reads it:
 * who changed which row of which table, and which fields. Every value comes from the tenant's
 * database, so every value is attacker-controlled: terminal text goes through terminalSafe, and
 * nothing here trusts a row's shape.
 */

/** A row of audit.change_log as it is stored. */
export interface ChangeLogRow {
  readonly id: string;
  readonly at: Date;
  readonly actor: string;
  readonly db_role: string;
  readonly txid: string;
  readonly schema_name: string;
  readonly table_name: string;
  readonly operation: string;
  readonly before: unknown;
  readonly after: unknown;
}

export const CHANGE_LOG_COLUMNS = 'id, at, actor, db_role, txid, schema_name, table_name, operation, before, after';

/** The channel audit.log_change() notifies at commit. */
export const CHANGE_LOG_CHANNEL = 'dforge_change_log';

/** One field of a change: `before` for update and delete, `after` for insert and update. */
export interface FieldChange {
  readonly field: string;
  readonly before?: unknown;
  readonly after?: unknown;
}

/** A change as `audit tail --tenant` shows it; the --json shape. */
export interface ChangeEntry {
  readonly id: number;
  readonly at: string;
  readonly actor: string;
  readonly dbRole: string;
  readonly operation: 'insert' | 'update' | 'delete' | 'truncate';
  readonly schema: string;
  readonly table: string;
  /** The table as a type name, and the row's `id` when it has one: crm.leads, id 3214 → Lead#3214. */
  readonly entity: string;
  /** update: the fields whose value changed; insert and delete: every field; truncate: none. */
  readonly changes: FieldChange[];
}

const OPERATIONS = new Set(['insert', 'update', 'delete', 'truncate']);

export function toChangeEntry(row: ChangeLogRow): ChangeEntry {
  const before = asRecord(row.before);
  const after = asRecord(row.after);
  const operation = row.operation.toLowerCase();
  if (!OPERATIONS.has(operation)) throw new VerificationError(`change-log entry ${row.id} has the unknown operation ${JSON.stringify(row.operation)}`, {nextSteps: ['audit.change_log has a CHECK on operation: someone changed the table itself. Keep the database as it is for investigation.']});
  let changes: FieldChange[] = [];
  if (operation === 'update') {
    const fields = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    changes = fields.filter((f) => JSON.stringify(before[f]) !== JSON.stringify(after[f])).map((field) => ({field, before: before[field] ?? null, after: after[field] ?? null}));
  } else if (operation === 'insert') {
    changes = Object.keys(after).map((field) => ({field, after: after[field]}));
  } else if (operation === 'delete') {
    changes = Object.keys(before).map((field) => ({field, before: before[field]}));
  }
  const id = rowId(operation === 'delete' ? before : after);
  return {
    id: Number(row.id),
    at: row.at.toISOString(),
    actor: row.actor,
    dbRole: row.db_role,
    operation: operation as ChangeEntry['operation'],
    schema: row.schema_name,
    table: row.table_name,
    entity: `${typeNameOf(row.table_name)}${id === undefined ? '' : `#${id}`}`,
    changes,
  };
}

/** A jsonb value that is not an object (a row inserted by hand) has no fields. */
function asRecord(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function rowId(row: Record<string, unknown>): string | undefined {
  const id = row.id;
  return typeof id === 'number' || (typeof id === 'string' && id !== '') ? String(id) : undefined;
}

/** A table name as a type name: leads → Lead, order_lines → OrderLine, companies → Company. */
export function typeNameOf(table: string): string {
  const words = table.split('_').filter(Boolean);
  if (words.length === 0) return table;
  words.push(singular(words.pop()!));
  return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join('');
}

function singular(word: string): string {
  if (/(ss|x|z|ch|sh)es$/i.test(word)) return word.slice(0, -2);
  if (/[^aeiou]ies$/i.test(word)) return `${word.slice(0, -3)}y`;
  if (/(ss|us|is)$/i.test(word)) return word;
  if (/s$/i.test(word) && word.length > 1) return word.slice(0, -1);
  return word;
}

const VALUE_WIDTH = 40;
const SUMMARY_WIDTH = 160;

function shorten(text: string, width: number): string {
  const chars = [...text];
  return chars.length <= width ? text : `${chars.slice(0, width - 1).join('')}…`;
}

function shortValue(value: unknown): string {
  return shorten(typeof value === 'string' ? value : (JSON.stringify(value) ?? 'null'), VALUE_WIDTH);
}

/** The changed fields as one line: `stage: qualified → won`, `created: name=Zoë, …`. */
export function summaryOf(entry: ChangeEntry): string {
  const fields = (pick: (c: FieldChange) => unknown): string =>
    entry.changes
      .filter((c) => c.field !== 'id')
      .map((c) => `${c.field}=${shortValue(pick(c))}`)
      .join(', ');
  switch (entry.operation) {
    case 'update':
      return shorten(entry.changes.length === 0 ? 'no field changed' : entry.changes.map((c) => `${c.field}: ${shortValue(c.before)} → ${shortValue(c.after)}`).join(', '), SUMMARY_WIDTH);
    case 'insert':
      return shorten(`created: ${fields((c) => c.after)}`, SUMMARY_WIDTH);
    case 'delete':
      return shorten(`deleted: ${fields((c) => c.before)}`, SUMMARY_WIDTH);
    case 'truncate':
      return 'every row removed';
  }
}

/**
 * One terminal line: `16:42:08Z  alice@acme.io  update  Lead#3214  stage: qualified → won`. Times
 * are UTC, as in the ops log, and say so; a change from another day than `now` carries its date.
 */
export function changeLine(entry: ChangeEntry, now: Date = new Date()): string {
  const at = formatTime(entry.at);
  const time = at.slice(0, 10) === formatTime(now).slice(0, 10) ? at.slice(11) : at;
  return [time, entry.actor, entry.operation.padEnd(8), entry.entity, summaryOf(entry)].map(terminalSafe).join('  ');
}

/** A time flag (ISO 8601, date first); anything else is a usage error naming the flag. */
export function parseAuditTime(flag: string, text: string): Date {
  const at = new Date(text);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(at.getTime())) throw new UsageError(`${flag} ${JSON.stringify(text)} is not an ISO 8601 time`, {nextSteps: [`e.g. ${flag} 2025-01-31T09:00:00Z`]});
  return at;
}

/** The newest `limit` changes (at or after `since`), oldest first. */
export async function readRecentChanges(c: Client, options: {since?: Date; limit: number}): Promise<ChangeLogRow[]> {
  const rows = await c.query<ChangeLogRow>(
    `SELECT * FROM (SELECT ${CHANGE_LOG_COLUMNS} FROM audit.change_log
       WHERE $1::pg_catalog.timestamptz IS NULL OR at OPERATOR(pg_catalog.>=) $1 ORDER BY id DESC LIMIT $2) newest ORDER BY id`,
    [options.since ?? null, options.limit],
  );
  return rows.rows;
}

/** The bounds of the statement's snapshot, as txids (the type of change_log.txid). */
const SNAPSHOT_BOUNDS = `pg_catalog.txid_snapshot_xmin(pg_catalog.txid_current_snapshot())::text AS xmin,
  pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())::text AS xmax`;

/**
 * How many ids below the newest one seen a follower remembers as not seen yet: a bound on its
 * memory and on each read's parameters, which a tenant could otherwise grow at will (nextval).
 */
const MAX_GAPS = 10_000;
const DRAIN_BATCH = 500;

/** Skipped ids a follower stopped watching: a row that commits later under one of them is not shown. */
interface UnwatchedIds {
  readonly count: bigint;
  readonly lowest: bigint;
  readonly highest: bigint;
}

/** What the operator is told when a follower stops watching ids: how many, and why. */
function unwatchedWarning(u: UnwatchedIds): string {
  return `stopped watching ${u.count} skipped change-log ids (${u.lowest} to ${u.highest}): a row that commits later under one of them will not be shown here. A follower watches at most ${MAX_GAPS} skipped ids (the newest) to bound its memory, and the tenant's role can skip ids at will (nextval on audit.change_log_id_seq) or write a row with a high id. Such rows are still in the change log: read it again with audit tail --tenant (without --follow) or audit export.`;
}

/**
 * Where a follower is. Ids come from a sequence when a row is written, but rows become visible at
 * commit, so a transaction holding id 10 can commit after one holding id 11 was shown: reading
 * only `id > last` would skip it for good. So the ids skipped below the newest shown are kept as
 * gaps, each with the snapshot's xmax when it was seen; a gap is dropped once a snapshot's xmin has
 * passed that xmax (every transaction that could hold it has ended, and it did not commit).
 */
class ChangeCursor {
  private lastId: bigint;
  private readonly gaps = new Map<bigint, bigint>();

  /** `unseen`: ids up to `lastId` that the starting snapshot (with bound `xmax`) did not show. */
  constructor(lastId: bigint, unseen: readonly string[], xmax: bigint) {
    this.lastId = lastId;
    for (const id of unseen) this.gaps.set(BigInt(id), xmax);
  }

  query(): {text: string; values: unknown[]} {
    return {
      text: `SELECT s.xmin, s.xmax, r.* FROM (SELECT ${SNAPSHOT_BOUNDS}) s
               LEFT JOIN LATERAL (SELECT ${CHANGE_LOG_COLUMNS} FROM audit.change_log
                 WHERE id OPERATOR(pg_catalog.>) $1 OR id OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.int8[])
                 ORDER BY id LIMIT ${DRAIN_BATCH}) r ON true`,
      values: [this.lastId.toString(), [...this.gaps.keys()].map(String)],
    };
  }

  /**
   * Takes one query's rows (by id), that query's snapshot bounds, and how far it looked: a read cut
   * off by its LIMIT saw every visible row only up to the last id it returned. Returns the rows not
   * shown yet.
   */
  advance(rows: readonly ChangeLogRow[], xmin: bigint, xmax: bigint, truncated: boolean): {fresh: ChangeLogRow[]; unwatched?: UnwatchedIds} {
    const fresh: ChangeLogRow[] = [];
    let unwatched: UnwatchedIds | undefined;
    const unwatch = (lowest: bigint, highest: bigint, count: bigint): void => {
      unwatched = unwatched ? {count: unwatched.count + count, lowest: lowest < unwatched.lowest ? lowest : unwatched.lowest, highest: highest > unwatched.highest ? highest : unwatched.highest} : {count, lowest, highest};
    };
    for (const row of rows) {
      const id = BigInt(row.id);
      if (id > this.lastId) {
        const floor = id - BigInt(MAX_GAPS);
        if (floor > this.lastId + 1n) unwatch(this.lastId + 1n, floor - 1n, floor - 1n - this.lastId);
        for (let gap = id - 1n; gap > this.lastId && gap >= floor; gap--) this.gaps.set(gap, xmax);
        this.lastId = id;
        fresh.push(row);
      } else if (this.gaps.delete(id)) {
        fresh.push(row);
      }
    }
    // A gap the read did not reach may have committed: it is dropped only once a read reached it.
    const reached = truncated && rows.length > 0 ? BigInt(rows.at(-1)!.id) : undefined;
    for (const [gap, seenAt] of this.gaps) if (xmin >= seenAt && (reached === undefined || gap < reached)) this.gaps.delete(gap);
    if (this.gaps.size > MAX_GAPS) {
      const oldest = [...this.gaps.keys()].sort((a, b) => (a < b ? -1 : 1)).slice(0, this.gaps.size - MAX_GAPS);
      for (const gap of oldest) this.gaps.delete(gap);
      unwatch(oldest[0]!, oldest.at(-1)!, BigInt(oldest.length));
    }
    return {fresh, unwatched};
  }
}

/**
 * Follows a tenant's change log until `signal` aborts: LISTEN first, then the newest `limit`
 * rows, then, on every notification, whatever is new in the table. A notification is only a
 * wake-up (the tenant can NOTIFY the channel with any payload), so rows always come from the
 * table, and a flood of them costs one read per batch, not one per notification.
 */
export async function followChanges(
  c: Client,
  options: {since?: Date; limit: number; signal: AbortSignal; onRows: (rows: ChangeLogRow[]) => void; onWarning: (message: string) => void},
): Promise<void> {
  let wake: () => void = () => undefined;
  let pending = true;
  let failure: Error | undefined;
  const notify = (): void => {
    pending = true;
    wake();
  };
  const onNotification = (n: Notification): void => {
    if (n.channel === CHANGE_LOG_CHANNEL) notify();
  };
  const onError = (err: Error): void => {
    failure = err;
    wake();
  };
  const onEnd = (): void => onError(new Error('the connection was closed'));
  c.on('notification', onNotification);
  c.on('error', onError);
  c.on('end', onEnd);
  options.signal.addEventListener('abort', notify);
  try {
    await c.query(`LISTEN ${CHANGE_LOG_CHANNEL}`);
    // The starting point and the first rows from one snapshot, after LISTEN: nothing committed
    // from here on is missed. A transaction in flight may already hold ids below the starting
    // point, so the ids up to MAX_GAPS below it that the snapshot does not show are gaps from the
    // start (most were rolled back or never used: they are dropped at the next read once no
    // transaction of that time is left).
    await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const initial = await readRecentChanges(c, options);
    const top = (await c.query<{max: string | null; xmin: string; xmax: string}>(`SELECT pg_catalog.max(id)::text AS max, ${SNAPSHOT_BOUNDS} FROM audit.change_log`)).rows[0]!;
    const start = initial[0] ? BigInt(initial[0].id) - 1n : BigInt(top.max ?? '0');
    const unseen = await c.query<{id: string}>(
      `SELECT g::pg_catalog.text AS id FROM pg_catalog.generate_series(GREATEST($1::pg_catalog.int8, 1), $2::pg_catalog.int8) g
        WHERE NOT EXISTS (SELECT FROM audit.change_log l WHERE l.id OPERATOR(pg_catalog.=) g)`,
      [(start - BigInt(MAX_GAPS) + 1n).toString(), start.toString()],
    );
    await c.query('COMMIT');
    const cursor = new ChangeCursor(start, unseen.rows.map((r) => r.id), BigInt(top.xmax));
    const shown = cursor.advance(initial, BigInt(top.xmin), BigInt(top.xmax), false);
    if (shown.unwatched) options.onWarning(unwatchedWarning(shown.unwatched));
    if (shown.fresh.length > 0) options.onRows(shown.fresh);
    // `pending` is still set: one read now covers anything notified while the snapshot was open.
    for (;;) {
      if (failure) throw new UserError(`lost the change-log session: ${failure.message}`, {nextSteps: ['Check that the tenant cluster is up (dforge status), then run audit tail --follow again.']});
      if (options.signal.aborted) return;
      if (!pending) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      pending = false;
      for (;;) {
        const q = cursor.query();
        const result = await c.query<ChangeLogRow & {xmin: string; xmax: string}>(q.text, q.values);
        const rows = result.rows.filter((r) => r.id !== null);
        const {fresh, unwatched} = cursor.advance(rows, BigInt(result.rows[0]!.xmin), BigInt(result.rows[0]!.xmax), rows.length === DRAIN_BATCH);
        if (unwatched) options.onWarning(unwatchedWarning(unwatched));
        if (fresh.length > 0) options.onRows(fresh);
        if (rows.length < DRAIN_BATCH) break;
      }
    }
  } finally {
    options.signal.removeEventListener('abort', notify);
    c.off('notification', onNotification);
    c.off('error', onError);
    c.off('end', onEnd);
  }
}

export interface ChangeTailOptions {
  readonly tenant: string;
  /** --allow-cross-region --reason: the tenant's changes may be read on a host of another region. */
  readonly approval?: CrossRegionApproval;
  readonly since?: Date;
  readonly limit: number;
  /** Keep reading new changes as they commit, until the signal aborts. */
  readonly follow?: {
    readonly signal: AbortSignal;
    onEntries(entries: ChangeEntry[]): void;
    /** When the follower stops watching skipped ids (more than it keeps): for stderr. */
    onWarning(message: string): void;
  };
}

/** The tenant's own session on its database; the control plane is closed once it is open. */
export async function openTenantChangeLog(dir: InstallDir, slug: string): Promise<Client> {
  return usingControlPlane(dir, async (plane) => connectTenantSession(dir, plane.config, plane.tenants, await plane.tenants.get(slug)));
}

/**
 * A tenant's change log, read as the tenant's own login role: the newest `limit` changes, or with
 * `follow` every change from there on, handed over as they commit (then nothing is returned).
 */
export async function tailChangeLog(dir: InstallDir, options: ChangeTailOptions): Promise<ChangeEntry[]> {
  // The change log is the tenant's data (before and after values): shown on this host, it is as
  // much a copy in operatorRegion as an export is, and redirecting stdout makes it a file.
  const c = await usingControlPlane(dir, async (plane) => {
    const tenant = await plane.tenants.get(options.tenant);
    const rerun = `dforge audit tail --tenant ${tenant.slug}${options.follow ? ' --follow' : ''}`;
    await enforceRegion(plane, plane.config, {tenant: tenant.slug, from: tenant.region, to: operatorRegionOf(plane.config), operation: 'export', what: `reading tenant ${tenant.slug}'s change log on this host`, rerun}, options.approval);
    return connectTenantSession(dir, plane.config, plane.tenants, tenant);
  });
  try {
    const {follow} = options;
    if (!follow) return (await readRecentChanges(c, options)).map(toChangeEntry);
    await followChanges(c, {...options, signal: follow.signal, onRows: (rows) => follow.onEntries(rows.map(toChangeEntry)), onWarning: follow.onWarning});
    return [];
  } finally {
    await c.end().catch(() => undefined);
  }
}
