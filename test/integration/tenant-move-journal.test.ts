import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {migrateControlSchema} from '../../src/control/schema.js';
import {UserError} from '../../src/errors.js';
import {MoveJournal, canRollBack} from '../../src/tenants/move-journal.js';
import {findPgBinaries, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.skipIf(!available)('tenant move journal (migration 4) on real PostgreSQL', () => {
  let cluster: PgCluster;
  let c: pg.Client;
  let journal: MoveJournal;
  const move = (slug: string) => ({slug, fromRegion: 'eu', fromCluster: 'eu-1', toRegion: 'eu', toCluster: 'eu-2', database: `t_${slug}`});

  beforeAll(async () => {
    cluster = await startPgCluster('move-journal');
    c = new pg.Client(cluster.clientConfig({database: 'postgres'}));
    await c.connect();
    await migrateControlSchema(c);
    journal = new MoveJournal(c);
  }, 120_000);
  afterAll(async () => {
    await c?.end().catch(() => undefined);
    await cluster?.stop();
  });

  it('refuses a second open move of the same tenant, naming the open one and how to finish or undo it; nothing is written', async () => {
    const first = await journal.plan(move('acme'));
    const err = await journal.plan({...move('acme'), toCluster: 'us-1', toRegion: 'us'}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toContain(`#${first.id}`);
    expect((err as UserError).message).toContain('eu-1 -> eu-2');
    expect(JSON.stringify((err as UserError).nextSteps)).toContain('dforge tenant move acme --resume');
    expect(JSON.stringify((err as UserError).nextSteps)).toContain('--rollback');
    const rows = await c.query("SELECT count(*)::int AS n FROM tenant_moves WHERE slug = 'acme'");
    expect(rows.rows[0].n).toBe(1);
  });

  it('walks the forward path one step at a time; a skipped or repeated step is refused; done frees the tenant for a new move', async () => {
    let m = await journal.plan(move('globex'));
    await expect(journal.advance(m, 'copied')).rejects.toThrow(/no step from planned to copied/);
    for (const to of ['frozen', 'copied', 'verified', 'cutover', 'done'] as const) m = await journal.advance(m, to);
    expect(m.state).toBe('done');
    expect(m.finishedAt).not.toBeNull();
    expect(await journal.open('globex')).toBeUndefined();
    expect((await journal.latest('globex'))?.id).toBe(m.id);
    const again = await journal.plan(move('globex'));
    expect(again.state).toBe('planned');
    expect((await journal.latest('globex'))?.id).toBe(again.id);
  });

  it('a stale record cannot take a step twice (the row moved on), and rollback is refused from cutover on', async () => {
    const planned = await journal.plan(move('initech'));
    const frozen = await journal.advance(planned, 'frozen');
    await expect(journal.advance(planned, 'frozen')).rejects.toThrow(/no longer in state planned/);
    expect(canRollBack('verified')).toBe(true);
    expect(canRollBack('cutover')).toBe(false);
    expect(canRollBack('done')).toBe(false);
    const rolled = await journal.advance(frozen, 'rolled-back', {error: 'operator rollback'});
    expect(rolled.state).toBe('rolled-back');
    expect(rolled.error).toBe('operator rollback');
    const m = await journal.plan(move('initech'));
    let s = m;
    for (const to of ['frozen', 'copied', 'verified', 'cutover'] as const) s = await journal.advance(s, to);
    await expect(journal.advance(s, 'rolled-back')).rejects.toThrow(/no step from cutover to rolled-back/);
  });

  it('the database refuses a state outside the machine', async () => {
    await expect(c.query("INSERT INTO tenant_moves (slug, from_region, from_cluster, to_region, to_cluster, database, state) VALUES ('x', 'a', 'b', 'c', 'd', 'e', 'halfway')")).rejects.toThrow(/check constraint/);
  });
});
