import {spawn, type ChildProcessWithoutNullStreams} from 'node:child_process';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {cliEntry, repoRoot} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** `audit tail --follow` as a separate process, with every stdout line and the time it arrived. */
interface Follower {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: Array<{text: string; at: number}>;
  readonly stderr: () => string;
  /** Resolves with the first line (from `from` on) matching `re`. */
  waitFor(re: RegExp, from?: number, timeoutMs?: number): Promise<{text: string; at: number}>;
  exit(): Promise<{code: number | null; signal: NodeJS.Signals | null}>;
}

function follow(install: EmbeddedInstall, args: string[]): Follower {
  const child = spawn(process.execPath, [cliEntry, 'audit', 'tail', '--follow', ...args, '--dir', install.dir.root], {cwd: repoRoot, env: {...process.env, NO_COLOR: '1'}});
  const lines: Array<{text: string; at: number}> = [];
  let partial = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout.on('data', (chunk: Buffer) => {
    const at = performance.now();
    partial += chunk.toString('utf8');
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const text of parts) lines.push({text, at});
    for (const w of waiters) w();
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) => child.on('close', (code, signal) => resolve({code, signal})));
  return {
    child,
    lines,
    stderr: () => stderr,
    waitFor(re, from = 0, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = lines.slice(from).find((l) => re.test(l.text));
          if (hit) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(hit);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no line matching ${re} within ${timeoutMs} ms; stdout: ${JSON.stringify(lines.map((l) => l.text))}; stderr: ${stderr}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    exit: () => exited,
  };
}

/**
 * `dforge audit tail --tenant` against a real quickstart install: the tenant's change log read as
 * the tenant's own role, what the app writes shown live, and nothing the tenant controls (a forged
 * NOTIFY, escape sequences in its data) getting further than a line of visible text.
 */
describe.skipIf(!available)('audit tail --tenant: the change log, live', () => {
  let install: EmbeddedInstall;
  /** The app: the tenant's login role on its own database. */
  let app: pg.Client;

  beforeAll(async () => {
    // quickstart creates the tenants acme and globex.
    install = await quickstartInstall();
    const plane = await install.plane();
    try {
      app = new pg.Client(install.clientConfig('tenant_acme', await install.tenantPassword(plane, 'acme'), 'tenant_acme'));
    } finally {
      await plane.close();
    }
    await app.connect();
    await app.query('CREATE TABLE crm.leads (id int PRIMARY KEY, name text, stage text)');
  }, 180_000);
  afterAll(async () => {
    await app?.end().catch(() => undefined);
    await install?.cleanup();
  });

  /** A second session of the app, for a transaction held open while others commit. */
  const appSession = async (): Promise<pg.Client> => {
    const plane = await install.plane();
    const password = await install.tenantPassword(plane, 'acme').finally(() => plane.close());
    const c = new pg.Client(install.clientConfig('tenant_acme', password, 'tenant_acme'));
    await c.connect();
    return c;
  };

  /** One app transaction: SET LOCAL dforge.actor, then `sql`. Returns when COMMIT has returned. */
  const asApp = async (actor: string, sql: string, params: unknown[] = []): Promise<number> => {
    await app.query('BEGIN');
    await app.query("SELECT set_config('dforge.actor', $1, true)", [actor]);
    await app.query(sql, params);
    await app.query('COMMIT');
    return performance.now();
  };

  it('shows the recent changes: actor, operation, entity and the changed fields', async () => {
    await asApp('alice@acme.io', "INSERT INTO crm.leads VALUES (3214, 'Initech', 'qualified')");
    await asApp('alice@acme.io', "UPDATE crm.leads SET stage = 'won' WHERE id = 3214");
    const text = await install.cli(['audit', 'tail', '--tenant', 'acme']);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines.at(-2)).toMatch(/^\d\d:\d\d:\d\dZ {2}alice@acme\.io {2}insert {4}Lead#3214 {2}created: name=Initech, stage=qualified$/);
    expect(lines.at(-1)).toMatch(/^\d\d:\d\d:\d\dZ {2}alice@acme\.io {2}update {4}Lead#3214 {2}stage: qualified → won$/);
    const json = await install.cli(['audit', 'tail', '--tenant', 'acme', '--limit', '1', '--json']);
    expect(JSON.parse(json.stdout).entries).toEqual([
      expect.objectContaining({actor: 'alice@acme.io', dbRole: 'tenant_acme', operation: 'update', schema: 'crm', table: 'leads', entity: 'Lead#3214', changes: [{field: 'stage', before: 'qualified', after: 'won'}]}),
    ]);
    // Without --tenant it is still the ops log: the tenant's creation is there.
    const ops = (JSON.parse((await install.cli(['audit', 'tail', '--json'])).stdout) as {entries: Array<{action: string; target: string}>}).entries;
    expect(ops).toContainEqual(expect.objectContaining({action: 'tenant.create', target: 'tenant:acme'}));
    const opsAbout = (JSON.parse((await install.cli(['audit', 'tail', '--ops', '--tenant', 'acme', '--json'])).stdout) as {entries: Array<{target: string}>}).entries;
    expect(opsAbout.length).toBeGreaterThan(0);
    expect(opsAbout.every((e) => e.target === 'tenant:acme')).toBe(true);
  });

  it('--follow shows a row the app commits within one second, with the actor and the database role', async () => {
    const f = follow(install, ['--tenant', 'acme', '--limit', '1', '--json']);
    try {
      // Started: the newest existing change is printed first.
      await f.waitFor(/"entity":"Lead#3214"/);
      for (const [i, actor] of ['bob@acme.io', 'carol@acme.io', 'dave@acme.io'].entries()) {
        const from = f.lines.length;
        const committed = await asApp(actor, 'INSERT INTO crm.leads VALUES ($1, $2, $3)', [5000 + i, `lead ${i}`, 'new']);
        const line = await f.waitFor(new RegExp(`"entity":"Lead#${5000 + i}"`), from);
        expect(line.at - committed, 'from COMMIT to the line on stdout').toBeLessThan(1000);
        expect(JSON.parse(line.text)).toMatchObject({actor, dbRole: 'tenant_acme', operation: 'insert', schema: 'crm', table: 'leads'});
      }
    } finally {
      f.child.kill('SIGTERM');
    }
    expect(await f.exit()).toEqual({code: 0, signal: null});
  });

  it('a forged NOTIFY from the tenant injects nothing, and a commit that lands after a later one is still shown', async () => {
    const f = follow(install, ['--tenant', 'acme', '--limit', '1']);
    try {
      await f.waitFor(/Lead#5002/);
      const start = f.lines.length;
      // The tenant may NOTIFY the channel with anything: it is a wake-up, never data.
      await app.query(`NOTIFY dforge_change_log, '999999999'`);
      await app.query(`SELECT pg_notify('dforge_change_log', $1)`, ['{"id":1,"actor":"mallory","operation":"DELETE"}\n12:00:00  mallory  delete  Lead#1']);
      // Two transactions whose change-log ids are allocated in one order and committed in the other.
      const other = await appSession();
      try {
        await other.query('BEGIN');
        await other.query("SELECT set_config('dforge.actor', 'early-id@acme.io', true)");
        await other.query("INSERT INTO crm.leads VALUES (6001, 'held', 'new')");
        await asApp('later-id@acme.io', "INSERT INTO crm.leads VALUES (6002, 'quick', 'new')");
        await f.waitFor(/Lead#6002/, start);
        await other.query('COMMIT');
        await f.waitFor(/Lead#6001/, start);
      } finally {
        await other.end();
      }
      // Give a junk wake-up time to have done anything it was going to do.
      await app.query(`NOTIFY dforge_change_log, 'junk'`);
      await new Promise((r) => setTimeout(r, 500));
      const shown = f.lines.slice(start).map((l) => l.text);
      expect(shown).toHaveLength(2);
      expect(shown.join('\n')).not.toMatch(/mallory|Lead#1\b/);
    } finally {
      f.child.kill('SIGINT');
    }
    expect(await f.exit()).toEqual({code: 0, signal: null});
  });

  it('escape sequences in tenant data reach the terminal as visible text, not as escapes', async () => {
    const hostile = '\u001b[2J\u001b]0;pwned\u0007\u009b31m\u202edone\r\nfake line';
    await asApp(`eve\u001b[31m@acme.io`, 'INSERT INTO crm.leads VALUES (7001, $1, $2)', [hostile, 'new']);
    const r = await install.cli(['audit', 'tail', '--tenant', 'acme', '--limit', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e]/);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(r.stdout).toContain('eve\\x1b[31m@acme.io');
    expect(r.stdout).toContain('\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202edone\\x0d\\x0afake line');
  });

  it('--follow shows every row of a 1,000-row import that commits after a later small transaction was shown, in id order', async () => {
    await asApp('alice@acme.io', "INSERT INTO crm.leads VALUES (10000, 'before', 'new')");
    const f = follow(install, ['--tenant', 'acme', '--limit', '1', '--json']);
    const importer = await appSession();
    try {
      await f.waitFor(/"entity":"Lead#10000"/);
      const start = f.lines.length;
      // The import takes change-log ids first (more than one read's batch of 500) and commits last.
      await importer.query('BEGIN');
      await importer.query("SELECT set_config('dforge.actor', 'import@acme.io', true)");
      await importer.query("INSERT INTO crm.leads SELECT g, 'imported', 'new' FROM pg_catalog.generate_series(10001, 11000) g");
      await asApp('small@acme.io', "INSERT INTO crm.leads VALUES (11001, 'small', 'new')");
      await f.waitFor(/"entity":"Lead#11001"/, start);
      await importer.query('COMMIT');
      await f.waitFor(/"entity":"Lead#11000"/, start);
      await new Promise((r) => setTimeout(r, 500));
      const entities = f.lines.slice(start).map((l) => (JSON.parse(l.text) as {entity: string}).entity);
      expect(entities).toEqual(['Lead#11001', ...Array.from({length: 1000}, (_, i) => `Lead#${10001 + i}`)]);
    } finally {
      await importer.end();
      f.child.kill('SIGTERM');
    }
    expect(await f.exit()).toEqual({code: 0, signal: null});
  });

  it('--follow shows a transaction that was in flight when it started, holding an id below where it starts', async () => {
    const held = await appSession();
    // One follower starts below its newest shown row; the other (--since in the future) shows nothing and starts at the newest id.
    const followers: Follower[] = [];
    try {
      await held.query('BEGIN');
      await held.query("SELECT set_config('dforge.actor', 'in-flight@acme.io', true)");
      await held.query("INSERT INTO crm.leads VALUES (12001, 'held', 'new')");
      await asApp('before-start@acme.io', "INSERT INTO crm.leads VALUES (12002, 'committed', 'new')");
      followers.push(follow(install, ['--tenant', 'acme', '--limit', '1', '--json']), follow(install, ['--tenant', 'acme', '--since', '2999-01-01T00:00:00Z', '--json']));
      await followers[0]!.waitFor(/"entity":"Lead#12002"/);
      // The second follower has taken its starting snapshot once it shows a row committed after it.
      for (let ping = 12100; ; ping++) {
        await asApp('ping@acme.io', 'INSERT INTO crm.leads VALUES ($1, $2, $3)', [ping, 'ping', 'new']);
        const shown = await followers[1]!.waitFor(new RegExp(`"entity":"Lead#${ping}"`), 0, 1000).then(
          () => true,
          () => false,
        );
        if (shown) break;
        expect(ping, 'the --since follower never started').toBeLessThan(12130);
      }
      await held.query('COMMIT');
      for (const f of followers) expect(JSON.parse((await f.waitFor(/"entity":"Lead#12001"/)).text)).toMatchObject({actor: 'in-flight@acme.io', operation: 'insert'});
    } finally {
      await held.end();
      for (const f of followers) f.child.kill('SIGTERM');
    }
    for (const f of followers) expect(await f.exit()).toEqual({code: 0, signal: null});
  });

  it('--follow says on stderr when it stops watching skipped ids (a tenant burning sequence values), and keeps following', async () => {
    await asApp('alice@acme.io', "INSERT INTO crm.leads VALUES (13000, 'before', 'new')");
    const f = follow(install, ['--tenant', 'acme', '--limit', '1', '--json']);
    try {
      await f.waitFor(/"entity":"Lead#13000"/);
      const start = f.lines.length;
      // The app's role may take ids without writing rows: 20,000 skipped ids, twice what a follower watches.
      await app.query("SELECT pg_catalog.nextval('audit.change_log_id_seq') FROM pg_catalog.generate_series(1, 20000)");
      await asApp('burner@acme.io', "INSERT INTO crm.leads VALUES (13001, 'after the burn', 'new')");
      await f.waitFor(/"entity":"Lead#13001"/, start);
      await asApp('burner@acme.io', "INSERT INTO crm.leads VALUES (13002, 'still followed', 'new')");
      await f.waitFor(/"entity":"Lead#13002"/, start);
      expect(f.stderr()).toMatch(/^warning: stopped watching 10000 skipped change-log ids \(\d+ to \d+\): .*nextval/m);
      // Gaps that pile up while a transaction stays open: two skips of 6,000, of which the oldest 2,000 go.
      const open = await appSession();
      try {
        await open.query('BEGIN');
        await open.query('SELECT pg_catalog.txid_current()');
        for (const lead of [13003, 13004]) {
          await app.query("SELECT pg_catalog.nextval('audit.change_log_id_seq') FROM pg_catalog.generate_series(1, 6000)");
          await asApp('burner@acme.io', 'INSERT INTO crm.leads VALUES ($1, $2, $3)', [lead, 'burst', 'new']);
          await f.waitFor(new RegExp(`"entity":"Lead#${lead}"`), start);
        }
      } finally {
        await open.end();
      }
      await asApp('burner@acme.io', "INSERT INTO crm.leads VALUES (13005, 'still followed', 'new')");
      await f.waitFor(/"entity":"Lead#13005"/, start);
      expect(f.stderr().match(/^warning: .*$/gm)).toEqual([expect.stringMatching(/^warning: stopped watching 10000 /), expect.stringMatching(/^warning: stopped watching 2000 skipped change-log ids \(\d+ to \d+\): /)]);
      // stdout stays data: one JSON object per line.
      for (const l of f.lines) expect(() => JSON.parse(l.text)).not.toThrow();
    } finally {
      f.child.kill('SIGTERM');
    }
    expect(await f.exit()).toEqual({code: 0, signal: null});
  });
});
