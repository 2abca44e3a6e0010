/**
 * HOSTILE TENANT vs OPERATOR COMMANDS.
 *
 * The rule: no tenant-controllable code ever runs in a session whose session_user has more
 * privilege than that tenant. Tenant acme (and a throwaway tenant "hostile") plants, from its own
 * session, code that runs wherever the data is touched:
 *   - a CHECK constraint calling a PL/pgSQL function; a domain with a CHECK; a STORED generated
 *     column (IMMUTABLE-declared function); a column DEFAULT; a BEFORE row trigger and an AFTER
 *     statement trigger; an index on an expression; a materialized view calling the function; a
 *     user-defined operator and a cast, each in a CHECK and in an index; an RLS policy; a rule;
 *   - builtin-shadowing functions and operators (name !~~ name, oid = oid, lower(), now()) in crm,
 *     and where the install lets it, in public and in schemas named after dforge's roles
 *     (dforge_provisioner, dforge_admin, tenant_acme__restore, ...), which would sit first on those
 *     roles' search_path as "$user".
 * Each trap, outside acme's own session, tries: RESET ROLE; SET ROLE to globex, the provisioner,
 * the superuser and acme's owner role; ALTER ROLE globex PASSWORD / CONNECTION LIMIT; giving acme
 * CREATEROLE; GRANT pg_execute_server_program / pg_read_server_files / pg_write_server_files /
 * tenant_globex / dforge_provisioner / tenant_acme__owner; CREATE ROLE (superuser and plain);
 * CREATE DATABASE; COPY ... TO PROGRAM (a marker file); pg_read_file of postgresql.conf and
 * server.key; COPY FROM server.key into a tenant table; ALTER SYSTEM; session_replication_role;
 * ALTER DATABASE connection limit / SET search_path and GRANT CONNECT TO PUBLIC (on tenant_acme
 * and on whatever database it runs in); killing globex's sessions; DELETE / UPDATE / TRUNCATE /
 * forged INSERT / COMMENT on audit.change_log; COMMENT on audit.log_change(); DROP / DISABLE /
 * ENABLE REPLICA of the change-log trigger.
 *
 * Then every operator command that touches acme runs (backup, verify --deep, restore in place,
 * restore --as a copy, rotate-credentials, suspend, resume, show, backup --all, prune, delete of
 * the copy and of the hostile tenant with --shred). Each must succeed (a restore may refuse with
 * exit 6 and change nothing), and after each, a superuser snapshot of everything outside the
 * tenant (roles, passwords, attributes, memberships, databases, settings, other databases'
 * objects and audit trails, server config files, install files, the control plane's other rows,
 * the marker) must show only what that command is meant to change. Finally: globex still logs in
 * with its sealed password (not with 'pwned') and kept its open session, the provisioner is no
 * superuser, has no CREATEROLE and is a member of nothing, no trap achieved anything acme cannot
 * do from its own session, and the restored databases keep their audit trail and its fences.
 */
import {promises as fs} from 'node:fs';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import type {CliResult} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {
  attemptWithEffect,
  canLogIn,
  clusterAccess,
  diffWorld,
  hostileObjectsSql,
  markerDirectory,
  preRestoreCopies,
  roleGraphViolations,
  snapshotWorld,
  tenantKeys,
  TRAP_KINDS,
  withClient,
  type ClusterAccess,
  type TrapLogRow,
  type WorldSnapshot,
} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** What acme's change log held when it was backed up: rows up to that id must come back unchanged. */
const AUDIT_DIGEST = "SELECT count(*)::int AS n, coalesce(max(id), 0)::bigint AS max, md5(coalesce(string_agg(concat_ws('|', id, schema_name, table_name, operation, before::text, after::text), E'\\n' ORDER BY id), '')) AS sum FROM audit.change_log WHERE id <= $1";

describe.skipIf(!available)('hostile tenant: operator commands never run its code with more privilege than it has', () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let markerDir: string;
  let baseline: WorldSnapshot;
  let previous: WorldSnapshot;
  /** Per tenant, the trap attempts its own role can do from its own session (rolled back): allowed anywhere. */
  const tenantCan = new Map<string, Set<string>>();
  /** Trap-log rows collected from databases that are deleted before the end (the copy). */
  const collectedTrapRows: TrapLogRow[] = [];
  let hostileTrapRows: TrapLogRow[] = [];
  const bestEffortPlanted: Record<string, string[]> = {};
  let globexSession: pg.Client;
  let globexPid: number;
  let globexSessionError: string | null = null;
  let restoreHasConfirm = false;
  let backupId: string | undefined;
  let copyCreated = false;
  let auditAtBackup: {n: number; max: string; sum: string} | undefined;

  const tenantDatabasesToWatch = ['tenant_globex'];
  const snap = (): Promise<WorldSnapshot> => snapshotWorld(install, access, {tenantDatabases: tenantDatabasesToWatch, markerDir});

  async function plant(slug: string, options: {matview?: boolean} = {}): Promise<void> {
    const sql = hostileObjectsSql(slug, `${markerDir}/${slug}-copy-to-program`, options);
    await install.asTenant(slug, (c) => c.query(sql.core));
    bestEffortPlanted[slug] = [];
    for (const {label, sql: statement} of sql.bestEffort) {
      const error = await install.asTenant(slug, async (c) => {
        try {
          await c.query('BEGIN');
          await c.query(statement);
          await c.query('COMMIT');
          return null;
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          return (err as Error).message;
        }
      });
      if (error === null) bestEffortPlanted[slug]!.push(label);
    }
    // What the tenant may do by itself: the same attempts from its own session, rolled back.
    const can = new Set<string>();
    await install.asTenant(slug, async (c) => {
      await c.query('BEGIN');
      try {
        for (const r of (await c.query<{attempt: string; ok: boolean}>('SELECT attempt, ok FROM crm.trap_attempts()')).rows) if (r.ok) can.add(r.attempt);
      } finally {
        await c.query('ROLLBACK');
      }
    });
    tenantCan.set(slug, can);
  }

  const trapLog = (slug: string): Promise<TrapLogRow[]> =>
    install.asTenant(slug, async (c) => (await c.query<TrapLogRow>('SELECT kind, sess, cur, db, attempt, ok, detail FROM crm.trap_log ORDER BY at')).rows);

  /** Trap outcomes that went beyond what the tenant (whose traps they are) can do itself: the breaches. */
  const breaches = (slug: string, rows: readonly TrapLogRow[]): string[] => {
    const byAttempt = new Map<string, Set<string>>();
    for (const r of rows.filter((x) => x.ok && x.attempt !== 'RESET ROLE' && !tenantCan.get(slug)!.has(x.attempt))) {
      byAttempt.set(r.attempt, (byAttempt.get(r.attempt) ?? new Set()).add(`${r.kind} trap in ${r.db} (session ${r.sess}, as ${r.cur})`));
    }
    return [...byAttempt].map(([attempt, where]) => `${attempt} — succeeded from: ${[...where].join('; ')}`);
  };
  const firedOutside = (rows: readonly TrapLogRow[]): string[] => [...new Set(rows.map((x) => `${x.kind} (session ${x.sess}, as ${x.cur})`))];

  /**
   * Runs one operator command. It must exit 0 (or 6 when `refusalAllowed`, with its "What to do"),
   * the world may differ from before the command only by keys matching `allowed` (nothing at all
   * after a refusal), and the command must not add a violation of the role-graph invariants (they
   * are checked absolutely at the end, so a standing misconfiguration is reported once there and
   * each step reports only what it did itself). Returns the result and the problems found, so a
   * test can finish its bookkeeping before it asserts.
   */
  async function operatorStep(args: string[], allowed: RegExp[], options: {refusalAllowed?: boolean; against?: WorldSnapshot} = {}): Promise<{r: CliResult; problems: Record<string, unknown>}> {
    const before = options.against ?? previous;
    const graphBefore = new Set(await roleGraphViolations(access));
    const r = await install.cli(args);
    const ok = r.code === 0 || (options.refusalAllowed === true && r.code === 6 && /What to do:|"nextSteps"/.test(r.stderr + r.stdout));
    const after = await snap();
    previous = after;
    const problems = {
      command: `dforge ${args.join(' ')}`,
      exit: ok ? 'ok' : `exit ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).split('\n').slice(0, 8).join(' | ')}`,
      changedOutsideTheTenant: diffWorld(before, after, r.code === 0 ? allowed : []),
      newRoleGraphViolations: (await roleGraphViolations(access)).filter((v) => !graphBefore.has(v)),
    };
    return {r, problems};
  }
  const clean = (command: string): Record<string, unknown> => ({command, exit: 'ok', changedOutsideTheTenant: [], newRoleGraphViolations: []});
  const expectClean = (step: {problems: Record<string, unknown>}): void => expect(step.problems).toEqual(clean(step.problems.command as string));

  /** The fences of a (restored) tenant database, probed from the tenant's own session. */
  async function fencesOf(slug: string): Promise<Record<string, string | boolean>> {
    return install.asTenant(slug, async (c) => {
      const deleteLog = await attemptWithEffect(c, 'DELETE FROM audit.change_log', "SELECT count(*)::text AS s FROM audit.change_log");
      const dropTrigger = await attemptWithEffect(c, 'DROP TRIGGER dforge_change_log ON crm.victim', "SELECT count(*)::text AS s FROM pg_trigger WHERE tgrelid = 'crm.victim'::regclass AND tgname = 'dforge_change_log'");
      const [{n: before}] = (await c.query<{n: number}>("SELECT count(*)::int AS n FROM audit.change_log WHERE table_name = 'victim'")).rows as [{n: number}];
      await c.query("UPDATE crm.victim SET v = 'fence probe' WHERE id = 1");
      const [{n: after}] = (await c.query<{n: number}>("SELECT count(*)::int AS n FROM audit.change_log WHERE table_name = 'victim'")).rows as [{n: number}];
      return {deleteFromChangeLogRefused: !deleteLog.done, dropChangeLogTriggerRefused: !dropTrigger.done, updateAudited: after === before + 1};
    });
  }
  const FENCES_HOLD = {deleteFromChangeLogRefused: true, dropChangeLogTriggerRefused: true, updateAudited: true};

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    markerDir = await markerDirectory();
    // An application session of globex that stays open through everything acme's traps try (and
    // is there when acme's own attempts are probed, so killing it is attempted for real).
    const plane = await install.plane();
    try {
      globexSession = new pg.Client(install.clientConfig('tenant_globex', await install.tenantPassword(plane, 'globex'), 'tenant_globex'));
    } finally {
      await plane.close();
    }
    globexSession.on('error', (err) => (globexSessionError = err.message));
    await globexSession.connect();
    globexPid = (await globexSession.query<{pid: number}>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    expect((await install.cli(['tenant', 'create', 'hostile'])).code).toBe(0);
    await plant('acme');
    // The throwaway tenant has no materialized view, so today's restore gets past its object-count
    // check (which counts a materialized view as a view) and the traps' work is swapped in.
    await plant('hostile', {matview: false});
    restoreHasConfirm = /--confirm/.test((await install.cli(['restore', '--help'])).stdout);
    baseline = await snap();
    previous = baseline;
  }, 600_000);

  afterAll(async () => {
    await globexSession?.end().catch(() => undefined);
    await install?.cleanup();
    if (markerDir) await fs.rm(markerDir, {recursive: true, force: true});
  });

  it('acme planted every kind of trap from its own session (crm is its schema), with rows for COPY to check', async () => {
    const planted = await install.asTenant('acme', async (c) => {
      const q = async (sql: string): Promise<number> => Number((await c.query<{n: string}>(sql)).rows[0]!.n);
      return {
        checks: await q("SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'crm.hostile'::regclass AND contype = 'c'"),
        domainChecks: await q("SELECT count(*) AS n FROM pg_constraint WHERE contypid = 'crm.trapped_int'::regtype"),
        generated: await q("SELECT count(*) AS n FROM pg_attribute WHERE attrelid = 'crm.hostile'::regclass AND attgenerated = 's'"),
        defaults: await q("SELECT count(*) AS n FROM pg_attrdef WHERE adrelid = 'crm.hostile'::regclass AND pg_get_expr(adbin, adrelid) LIKE '%trap_int%'"),
        triggers: await q("SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = 'crm.hostile'::regclass AND tgname IN ('hostile_row', 'hostile_stmt')"),
        expressionIndexes: await q("SELECT count(*) AS n FROM pg_index WHERE indrelid = 'crm.hostile'::regclass AND indexprs IS NOT NULL"),
        matviews: await q("SELECT count(*) AS n FROM pg_matviews WHERE schemaname = 'crm' AND matviewname = 'hostile_mv'"),
        operators: await q("SELECT count(*) AS n FROM pg_operator WHERE oprnamespace = 'crm'::regnamespace"),
        casts: await q("SELECT count(*) AS n FROM pg_cast WHERE castsource = 'crm.mood'::regtype"),
        policies: await q("SELECT count(*) AS n FROM pg_policy WHERE polrelid = 'crm.hostile'::regclass"),
        rules: await q("SELECT count(*) AS n FROM pg_rules WHERE schemaname = 'crm' AND rulename = 'hostile_rule'"),
        rows: await q('SELECT count(*) AS n FROM crm.hostile'),
        shadowingFunctions: await q("SELECT count(*) AS n FROM pg_proc WHERE pronamespace = 'crm'::regnamespace AND proname IN ('lower', 'now')"),
      };
    });
    expect(planted).toEqual({checks: 3, domainChecks: 1, generated: 1, defaults: 1, triggers: 2, expressionIndexes: 3, matviews: 1, operators: 3, casts: 1, policies: 1, rules: 1, rows: 5, shadowingFunctions: 2});
    // For the record: what the install let acme plant outside crm (public, "$user" schemas of dforge's roles).
    process.stderr.write(`[hostile] best-effort traps planted: ${JSON.stringify(bestEffortPlanted)}\n[hostile] acme can do itself: ${JSON.stringify([...tenantCan.get('acme')!])}\n`);
  });

  it('backup --tenant acme', async () => {
    const before = await install.asTenant('acme', async (c) => (await c.query<{n: number; max: string; sum: string}>(AUDIT_DIGEST, [Number.MAX_SAFE_INTEGER])).rows[0]!);
    const step = await operatorStep(['backup', '--tenant', 'acme', '--json'], []);
    if (step.r.code === 0) {
      backupId = (JSON.parse(step.r.stdout) as {id: string}).id;
      auditAtBackup = before;
    }
    expectClean(step);
    expect(backupId).toMatch(/-acme-[0-9a-f]{6}$/);
  });

  it('backup verify --deep', async () => {
    expect(backupId, 'needs the backup of the previous step').toBeDefined();
    const step = await operatorStep(['backup', 'verify', backupId!, '--deep', '--json'], []);
    expectClean(step);
    expect(JSON.parse(step.r.stdout)).toMatchObject({id: backupId, deep: true});
  });

  it('restore --tenant acme in place: the hostile dump cannot act beyond acme, and the restored database keeps its audit trail and fences', async () => {
    expect(backupId, 'needs the backup of the previous step').toBeDefined();
    const step = await operatorStep(['restore', '--tenant', 'acme', '--from', backupId!, ...(restoreHasConfirm ? ['--confirm', 'acme'] : []), '--json'], [preRestoreCopies('acme')], {refusalAllowed: true});
    expect.soft(step.problems).toEqual(clean(step.problems.command as string));
    const rows = await trapLog('acme');
    process.stderr.write(`[hostile] after the in-place restore, traps that fired outside acme's session: ${JSON.stringify(firedOutside(rows))}\n`);
    expect.soft(breaches('acme', rows), 'trap attempts that succeeded beyond what acme can do').toEqual([]);
    if (step.r.code !== 0) return; // refused: the snapshot already showed that nothing changed
    const after = await install.asTenant('acme', async (c) => (await c.query<{n: number; max: string; sum: string}>(AUDIT_DIGEST, [auditAtBackup!.max])).rows[0]!);
    expect.soft(after, "acme's change log up to the backup must come back exactly").toEqual(auditAtBackup);
    expect.soft(await install.asTenant('acme', async (c) => Number((await c.query<{n: string}>('SELECT count(*) AS n FROM crm.loot')).rows[0]!.n)), 'lines of server files exfiltrated into crm.loot').toBe(0);
    expect.soft(await fencesOf('acme'), 'the restored database keeps its fences').toEqual(FENCES_HOLD);
  });

  it('restore --tenant acme --as acme-copy: same, for a new tenant made from the hostile dump', async () => {
    expect(backupId, 'needs the backup of the previous step').toBeDefined();
    const step = await operatorStep(['restore', '--tenant', 'acme', '--from', backupId!, '--as', 'acme-copy', '--json'], tenantKeys('acme-copy'), {refusalAllowed: true});
    copyCreated = (await install.cli(['tenant', 'show', 'acme-copy'])).code === 0;
    expect.soft(step.problems).toEqual(clean(step.problems.command as string));
    if (step.r.code !== 0 || !copyCreated) return;
    const rows = await trapLog('acme-copy');
    collectedTrapRows.push(...rows);
    process.stderr.write(`[hostile] in acme-copy, traps that fired outside acme's session: ${JSON.stringify(firedOutside(rows))}\n`);
    expect.soft(breaches('acme', rows), 'trap attempts that succeeded beyond what acme can do').toEqual([]);
    expect.soft(await install.asTenant('acme-copy', async (c) => Number((await c.query<{n: string}>('SELECT count(*) AS n FROM crm.loot')).rows[0]!.n)), 'lines of server files exfiltrated into crm.loot').toBe(0);
    expect.soft(await fencesOf('acme-copy'), 'the restored copy has the fences of a new tenant').toEqual(FENCES_HOLD);
  });

  it('backup and restore in place of the throwaway tenant (no materialized view, so today\'s restore completes and swaps the traps\' work in)', async () => {
    const backup = await operatorStep(['backup', '--tenant', 'hostile', '--json'], []);
    expect.soft(backup.problems).toEqual(clean(backup.problems.command as string));
    expect(backup.r.code, backup.r.stderr).toBe(0);
    const id = (JSON.parse(backup.r.stdout) as {id: string}).id;
    const restore = await operatorStep(['restore', '--tenant', 'hostile', '--from', id, ...(restoreHasConfirm ? ['--confirm', 'hostile'] : []), '--json'], [preRestoreCopies('hostile')], {refusalAllowed: true});
    expect.soft(restore.problems).toEqual(clean(restore.problems.command as string));
    if (restore.r.code !== 0) return;
    hostileTrapRows = await trapLog('hostile');
    process.stderr.write(`[hostile] after the restore of tenant hostile, traps that fired outside its session: ${JSON.stringify(firedOutside(hostileTrapRows))}\n`);
    expect.soft(breaches('hostile', hostileTrapRows), 'trap attempts that succeeded beyond what the tenant can do').toEqual([]);
    expect.soft(await install.asTenant('hostile', async (c) => Number((await c.query<{n: string}>('SELECT count(*) AS n FROM crm.loot')).rows[0]!.n)), 'lines of server files exfiltrated into crm.loot').toBe(0);
    expect.soft(await fencesOf('hostile'), 'the restored database keeps its fences').toEqual(FENCES_HOLD);
  });

  it("tenant rotate-credentials acme: only acme's password changes", async () => {
    expectClean(await operatorStep(['tenant', 'rotate-credentials', 'acme', '--json'], [/^role:tenant_acme\/rolpassword$/, /^control:credentials:acme$/, /^catalog-(password|published):acme$/]));
  });

  it("tenant suspend acme, then resume: only acme's access changes, and resume puts everything back", async () => {
    const beforeSuspend = previous;
    const suspend = await operatorStep(['tenant', 'suspend', 'acme', '--json'], [/^role:tenant_acme\//, /^db:tenant_acme\//, /^control:tenants:acme$/, /^catalog(-password|-published)?:acme$/]);
    const resume = await operatorStep(['tenant', 'resume', 'acme', '--json'], [], {against: beforeSuspend});
    expect.soft(suspend.problems).toEqual(clean(suspend.problems.command as string));
    expect.soft(resume.problems).toEqual(clean(resume.problems.command as string));
  });

  it('tenant show acme', async () => {
    const step = await operatorStep(['tenant', 'show', 'acme', '--json'], []);
    expectClean(step);
    expect(JSON.parse(step.r.stdout)).toMatchObject({slug: 'acme', status: 'active', roleCanLogin: true, databaseExists: true, publicCanConnect: false, connectionLimit: 20});
  });

  it('backup --all', async () => {
    expectClean(await operatorStep(['backup', '--all', '--json'], []));
  });

  it('backup prune: a dry run, then a real one that drops the kept pre-restore copy of acme', async () => {
    const dry = await operatorStep(['backup', 'prune', '--dry-run', '--json'], []);
    const real = await operatorStep(['backup', 'prune', '--keep-pre-restore-hours', '0', '--json'], [preRestoreCopies('acme'), preRestoreCopies('hostile')]);
    expect.soft(dry.problems).toEqual(clean(dry.problems.command as string));
    expect.soft(real.problems).toEqual(clean(real.problems.command as string));
  });

  it('tenant delete acme-copy', async () => {
    if (!copyCreated) {
      // The restore refused the dump: there is no copy, and deleting it says so.
      expect((await install.cli(['tenant', 'delete', 'acme-copy', '--confirm', 'acme-copy'])).code).toBe(1);
      return;
    }
    expectClean(await operatorStep(['tenant', 'delete', 'acme-copy', '--confirm', 'acme-copy', '--json'], tenantKeys('acme-copy')));
  });

  it('tenant delete hostile --shred (a throwaway tenant with the same traps)', async () => {
    expectClean(await operatorStep(['tenant', 'delete', 'hostile', '--confirm', 'hostile', '--shred', '--json'], tenantKeys('hostile')));
  });

  it('in the end nothing outside the tenants changed: roles, passwords, memberships, databases, settings, config files, install files, no marker', async () => {
    const final = await snap();
    // acme-copy was deleted without --shred, so its data key stays: its backups remain restorable.
    const expected = [/^role:tenant_acme\/rolpassword$/, /^control:credentials:acme$/, /^catalog-(password|published):acme$/, preRestoreCopies('acme'), ...tenantKeys('hostile'), /^control:datakeys:acme-copy:/];
    expect.soft(diffWorld(baseline, final, expected)).toEqual([]);
    expect.soft(await fs.readdir(markerDir), 'COPY ... TO PROGRAM ran on the server').toEqual([]);
    expect.soft(await roleGraphViolations(access)).toEqual([]);
  });

  it('globex logs in with its sealed password, not with "pwned", and its open session survived', async () => {
    const plane = await install.plane();
    let password: string;
    try {
      password = await install.tenantPassword(plane, 'globex');
    } finally {
      await plane.close();
    }
    expect(await canLogIn(install, 'tenant_globex', password, 'tenant_globex')).toBe(true);
    expect(await canLogIn(install, 'tenant_globex', 'pwned', 'tenant_globex')).toMatch(/password authentication failed/);
    expect(globexSessionError).toBeNull();
    expect((await globexSession.query<{pid: number}>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid).toBe(globexPid);
  });

  it('the provisioner is still no superuser, has no CREATEROLE, and is a member of nothing', async () => {
    const state = await withClient(access.superuser(), async (su) => ({
      attributes: (await su.query("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'dforge_provisioner'")).rows[0],
      memberOf: (await su.query<{r: string}>("SELECT r.rolname AS r FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = 'dforge_provisioner'::regrole ORDER BY 1")).rows.map((x) => x.r),
      members: (await su.query<{r: string}>("SELECT u.rolname AS r FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = 'dforge_provisioner'::regrole ORDER BY 1")).rows.map((x) => x.r),
    }));
    expect(state).toEqual({attributes: {rolsuper: false, rolcreaterole: false}, memberOf: [], members: []});
  });

  it('no trap, wherever it fired, did anything acme cannot do from its own session; nothing was exfiltrated', async () => {
    const rows = [...collectedTrapRows, ...(await trapLog('acme'))];
    const fired = new Set([...rows, ...hostileTrapRows].map((r) => r.kind));
    process.stderr.write(`[hostile] trap kinds that ran outside the tenant's session: ${JSON.stringify(TRAP_KINDS.filter((k) => fired.has(k)))}; never: ${JSON.stringify(TRAP_KINDS.filter((k) => !fired.has(k)))}\n`);
    expect.soft(breaches('acme', rows)).toEqual([]);
    expect.soft(breaches('hostile', hostileTrapRows)).toEqual([]);
    expect(await install.asTenant('acme', async (c) => Number((await c.query<{n: string}>('SELECT count(*) AS n FROM crm.loot')).rows[0]!.n))).toBe(0);
    // acme itself gained nothing: same attributes and limits as before (also in the snapshot diff).
    const me = await withClient(access.superuser(), async (su) => (await su.query("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = 'tenant_acme'")).rows[0]);
    expect(me).toEqual({rolsuper: false, rolcreaterole: false, rolcreatedb: false, rolreplication: false, rolbypassrls: false, rolcanlogin: true, rolconnlimit: 20});
  });
});
