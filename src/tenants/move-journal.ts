/**
 * The journal of tenant moves (control table tenant_moves, migration 4). A move is a row that
 * walks planned -> frozen -> copied -> verified -> cutover -> done, or ends rolled-back from any
 * state before cutover. The row is written, naming the target cluster and database, before
 * anything exists on the target: whoever finds it (a --resume, a --rollback) knows exactly what
 * to finish or to drop, so a move killed at any step never leaves an unrecorded database behind.
 */
import type {Client} from 'pg';

import {UserError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';

export const MOVE_STATES = ['planned', 'frozen', 'copied', 'verified', 'cutover', 'done', 'rolled-back'] as const;
export type MoveState = (typeof MOVE_STATES)[number];

/** The forward path; rolled-back is off it. */
const FORWARD: readonly MoveState[] = ['planned', 'frozen', 'copied', 'verified', 'cutover', 'done'];

/** Past cutover the registry names the target: going back is a new move, not a rollback. */
export const canRollBack = (state: MoveState): boolean => FORWARD.indexOf(state) >= 0 && FORWARD.indexOf(state) < FORWARD.indexOf('cutover');

export interface MoveRecord {
  readonly id: number;
  readonly slug: string;
  readonly fromRegion: string;
  readonly fromCluster: string;
  readonly toRegion: string;
  readonly toCluster: string;
  /** The tenant's database name, the same on both clusters: what a rollback drops on the target. */
  readonly database: string;
  readonly state: MoveState;
  readonly reason: string | null;
  /** The --reason of an approved region crossing; null when the move stays in its region. */
  readonly approvalReason: string | null;
  readonly error: string | null;
  readonly startedAt: string;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
  /**
   * A cross-region move rotates the tenant's data key before cutover: this is the version that
   * rotation made. Backups the tenant makes from then on (in the new region) use it or a later one,
   * so the versions below it protect only what was made before the move: what --purge-source may
   * destroy to crypto-shred source-region backups it cannot delete.
   */
  readonly keyRotatedTo: number | null;
  /** When --purge-source finished removing what the move left at the source. */
  readonly sourcePurgedAt: string | null;
}

interface Row {
  id: string;
  slug: string;
  from_region: string;
  from_cluster: string;
  to_region: string;
  to_cluster: string;
  database: string;
  state: MoveState;
  reason: string | null;
  approval_reason: string | null;
  error: string | null;
  started_at: Date;
  updated_at: Date;
  finished_at: Date | null;
  key_rotated_to: number | null;
  source_purged_at: Date | null;
}

const COLUMNS = 'id, slug, from_region, from_cluster, to_region, to_cluster, database, state, reason, approval_reason, error, started_at, updated_at, finished_at, key_rotated_to, source_purged_at';

function toRecord(r: Row): MoveRecord {
  return {
    id: Number(r.id),
    slug: r.slug,
    fromRegion: r.from_region,
    fromCluster: r.from_cluster,
    toRegion: r.to_region,
    toCluster: r.to_cluster,
    database: r.database,
    state: r.state,
    reason: r.reason,
    approvalReason: r.approval_reason,
    error: r.error,
    startedAt: r.started_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
    finishedAt: r.finished_at?.toISOString() ?? null,
    keyRotatedTo: r.key_rotated_to,
    sourcePurgedAt: r.source_purged_at?.toISOString() ?? null,
  };
}

export class MoveJournal {
  constructor(private readonly c: Client) {}

  /**
   * Records a planned move. The partial unique index allows one open move per tenant, so a
   * second plan is refused with the open one named, and how to finish or undo it.
   */
  async plan(move: {slug: string; fromRegion: string; fromCluster: string; toRegion: string; toCluster: string; database: string; reason?: string; approvalReason?: string}): Promise<MoveRecord> {
    try {
      const row = await this.c.query<Row>(
        `INSERT INTO tenant_moves (slug, from_region, from_cluster, to_region, to_cluster, database, state, reason, approval_reason)
         VALUES ($1, $2, $3, $4, $5, $6, 'planned', $7, $8) RETURNING ${COLUMNS}`,
        [move.slug, move.fromRegion, move.fromCluster, move.toRegion, move.toCluster, move.database, move.reason ?? null, move.approvalReason ?? null],
      );
      crashPoint('tenant.move.planned');
      return toRecord(row.rows[0]!);
    } catch (err) {
      if ((err as {code?: string}).code !== '23505') throw err;
      const open = await this.open(move.slug);
      throw new UserError(`tenant ${move.slug} already has an open move${open ? ` (#${open.id}, ${open.fromCluster} -> ${open.toCluster}, state ${open.state})` : ''}; nothing was changed`, {
        nextSteps: [`Finish it with: dforge tenant move ${move.slug} --resume`, `Or undo it with: dforge tenant move ${move.slug} --rollback`],
        data: {tenant: move.slug, moveId: open?.id ?? null, state: open?.state ?? null},
      });
    }
  }

  /**
   * Moves the journal one step, from exactly the state it is in; `c` may be a session inside a
   * transaction that also changes the registry (the cutover). A step already taken is refused,
   * so two runners can never both believe they took it (the tenant lock makes that moot, the
   * WHERE clause makes it true regardless).
   */
  async advance(move: MoveRecord, to: MoveState, o: {error?: string; c?: Client} = {}): Promise<MoveRecord> {
    const legal = to === 'rolled-back' ? canRollBack(move.state) : FORWARD.indexOf(to) === FORWARD.indexOf(move.state) + 1;
    if (!legal) throw new Error(`tenant move #${move.id}: no step from ${move.state} to ${to}`);
    const finished = to === 'done' || to === 'rolled-back';
    const row = await (o.c ?? this.c).query<Row>(
      `UPDATE tenant_moves SET state = $3, error = COALESCE($4, error), updated_at = now(), finished_at = CASE WHEN $5 THEN now() ELSE finished_at END
        WHERE id = $1 AND state = $2 RETURNING ${COLUMNS}`,
      [move.id, move.state, to, o.error ?? null, finished],
    );
    if (row.rowCount !== 1) throw new Error(`tenant move #${move.id} is no longer in state ${move.state}`);
    // Inside a caller's transaction the step is durable only at its COMMIT: the caller marks it.
    if (o.c === undefined) crashPoint(`tenant.move.${to}`);
    return toRecord(row.rows[0]!);
  }

  /** Records the data-key version the pre-cutover rotation made (once: a rerun finds it set and does not rotate again). */
  async recordKeyRotation(move: MoveRecord, version: number): Promise<MoveRecord> {
    const row = await this.c.query<Row>(`UPDATE tenant_moves SET key_rotated_to = $2, updated_at = now() WHERE id = $1 AND key_rotated_to IS NULL RETURNING ${COLUMNS}`, [move.id, version]);
    if (row.rowCount !== 1) throw new Error(`tenant move #${move.id} already recorded a key rotation`);
    crashPoint('tenant.move.key-rotated');
    return toRecord(row.rows[0]!);
  }

  /** Marks the finished move's source as purged. */
  async markSourcePurged(move: MoveRecord): Promise<MoveRecord> {
    const row = await this.c.query<Row>(`UPDATE tenant_moves SET source_purged_at = now(), updated_at = now() WHERE id = $1 AND state = 'done' RETURNING ${COLUMNS}`, [move.id]);
    if (row.rowCount !== 1) throw new Error(`tenant move #${move.id} is not done`);
    return toRecord(row.rows[0]!);
  }

  /** Notes why the last attempt stopped, without changing the state: --status shows it. */
  async noteError(move: MoveRecord, error: string): Promise<void> {
    await this.c.query('UPDATE tenant_moves SET error = $2, updated_at = now() WHERE id = $1', [move.id, error]);
  }

  /** The tenant's open move, if any. */
  async open(slug: string): Promise<MoveRecord | undefined> {
    const row = await this.c.query<Row>(`SELECT ${COLUMNS} FROM tenant_moves WHERE slug = $1 AND state NOT IN ('done', 'rolled-back')`, [slug]);
    return row.rowCount === 1 ? toRecord(row.rows[0]!) : undefined;
  }

  /** The tenant's newest finished move whose source is not purged yet: what --purge-source acts on next. */
  async nextToPurge(slug: string): Promise<MoveRecord | undefined> {
    const row = await this.c.query<Row>(`SELECT ${COLUMNS} FROM tenant_moves WHERE slug = $1 AND state = 'done' AND source_purged_at IS NULL ORDER BY id DESC LIMIT 1`, [slug]);
    return row.rowCount === 1 ? toRecord(row.rows[0]!) : undefined;
  }

  /** The tenants with an open move: what the app catalog marks as moving. */
  async openSlugs(): Promise<Set<string>> {
    return new Set((await this.c.query<{slug: string}>("SELECT slug FROM tenant_moves WHERE state NOT IN ('done', 'rolled-back')")).rows.map((r) => r.slug));
  }

  /** Every move of every tenant, oldest first: the residency report's record of moves. */
  async all(): Promise<MoveRecord[]> {
    return (await this.c.query<Row>(`SELECT ${COLUMNS} FROM tenant_moves ORDER BY id`)).rows.map(toRecord);
  }

  /** The tenant's open move, else its most recent one. */
  async latest(slug: string): Promise<MoveRecord | undefined> {
    const row = await this.c.query<Row>(
      `SELECT ${COLUMNS} FROM tenant_moves WHERE slug = $1 ORDER BY (state NOT IN ('done', 'rolled-back')) DESC, id DESC LIMIT 1`,
      [slug],
    );
    return row.rowCount === 1 ? toRecord(row.rows[0]!) : undefined;
  }
}
