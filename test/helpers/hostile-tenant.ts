/**
 * Tools for the hostile-tenant suite (test/adversarial/): the superuser's view of the world, so a
 * test can prove that nothing outside a tenant changed, and the SQL a hostile tenant plants.
 *
 * The superuser (dforge_admin) is reached only over the embedded cluster's unix socket, with its
 * sealed password: the same way dforge itself reaches it, and nothing a tenant can touch.
 */
import {createHash, randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';

import {loadConfigFile} from '../../src/config/load.js';
import {primaryCluster, provisionerSecret, superuserSecret} from '../../src/control/clusters.js';
import {openKeyServices} from '../../src/keys/context.js';
import {connectOverSocket} from '../../src/postgres/connect.js';
import {EMBEDDED_SUPERUSER} from '../../src/postgres/embedded-install.js';
import type {EmbeddedInstall} from './embedded-install.js';

const escapeLiteral = (s: string): string => pg.escapeLiteral(s);
const escapeIdentifier = (s: string): string => pg.escapeIdentifier(s);

export const tenantRole = (slug: string): string => `tenant_${slug.replaceAll('-', '_')}`;
const sha = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex').slice(0, 16);
const reEscape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// ---------------------------------------------------------------------------------------------
// Superuser and provisioner access

export interface ClusterAccess {
  readonly cluster: string;
  readonly dataDir: string;
  readonly socketDir: string;
  readonly superuserPassword: string;
  readonly provisionerPassword: string;
  /** A superuser session over the unix socket. */
  superuser(database?: string): Promise<pg.Client>;
  /** A dforge_provisioner session over TLS, as dforge itself logs in. */
  provisioner(database?: string): Promise<pg.Client>;
}

/** When set (to a major version such as 17), clusterAccess() fails unless the cluster runs that version. */
export const EXPECTED_PG_MAJOR_ENV = 'DFORGE_TEST_EXPECT_PG_MAJOR';

export async function clusterAccess(install: EmbeddedInstall): Promise<ClusterAccess> {
  const config = await loadConfigFile(install.dir.configFile);
  const cluster = primaryCluster(config).name;
  const keys = await openKeyServices(install.dir);
  const superuserPassword = (await keys.sealed.get(superuserSecret(cluster))).toString('utf8');
  const provisionerPassword = (await keys.sealed.get(provisionerSecret(cluster))).toString('utf8');
  const socketDir = path.join(install.dir.root, 'run', 'postgres', cluster);
  const superuser = (database = 'postgres'): Promise<pg.Client> => connectOverSocket(socketDir, install.port, {user: EMBEDDED_SUPERUSER, password: superuserPassword, database});
  // Set by test/adversarial/postgresql-17.test.ts for the run inside its container, which reads this line.
  const expectedMajor = process.env[EXPECTED_PG_MAJOR_ENV];
  if (expectedMajor) {
    const version = await withClient(superuser(), async (su) => Number((await su.query<{v: string}>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v));
    process.stderr.write(`[hostile-tenant] server_version_num ${version}\n`);
    if (Math.floor(version / 10_000) !== Number(expectedMajor)) throw new Error(`${EXPECTED_PG_MAJOR_ENV}=${expectedMajor}, but the cluster runs server_version_num ${version}`);
  }
  return {
    cluster,
    dataDir: path.join(install.dir.root, 'data', 'postgres', cluster),
    socketDir,
    superuserPassword,
    provisionerPassword,
    superuser,
    async provisioner(database = 'postgres') {
      const c = new pg.Client(install.clientConfig('dforge_provisioner', provisionerPassword, database));
      await c.connect();
      return c;
    },
  };
}

export async function withClient<T>(open: Promise<pg.Client>, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await open;
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Runs `sql` in a transaction that is always rolled back; the error message, or null if it succeeded. */
export async function attemptRolledBack(c: pg.Client, sql: string, params: unknown[] = []): Promise<string | null> {
  await c.query('BEGIN');
  try {
    await c.query(sql, params);
    return null;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await c.query('ROLLBACK').catch(() => undefined);
  }
}

/**
 * Runs `sql` in a transaction that is always rolled back. It counts as done when it did not error
 * and the state that `probe` reads (one row, column s) changed: an action that is silently
 * neutralised did not happen.
 */
export async function attemptWithEffect(c: pg.Client, sql: string, probe: string): Promise<{sql: string; error: string | null; done: boolean}> {
  await c.query('BEGIN');
  try {
    const before = (await c.query<{s: string}>(probe)).rows[0]?.s;
    try {
      await c.query(sql);
    } catch (err) {
      return {sql, error: (err as Error).message, done: false};
    }
    const after = (await c.query<{s: string}>(probe)).rows[0]?.s;
    return {sql, error: null, done: after !== before};
  } finally {
    await c.query('ROLLBACK').catch(() => undefined);
  }
}

/** Whether `user` can log in to `database` with `password` (over the product's TLS). */
export async function canLogIn(install: EmbeddedInstall, user: string, password: string, database: string): Promise<boolean | string> {
  const c = new pg.Client(install.clientConfig(user, password, database));
  try {
    await c.connect();
    await c.query('SELECT 1');
    return true;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await c.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Snapshots of everything outside a tenant, as the superuser sees it

/** A flat map: key (what) -> value (its state). Keys name their subject so a diff reads by itself. */
export type WorldSnapshot = Map<string, string>;

/**
 * Install files that operator commands are expected to write, relative to the install root:
 *  - data/: the cluster's storage changes with every write (its configuration files are
 *    snapshotted separately, by content, under server:*);
 *  - run/: the server's socket, lock file and logs;
 *  - backups/: new backup files and their manifests (that is what backup commands are for);
 *  - state/backups/: each tenant's last-success marker, rewritten by every backup;
 *  - state/ops-log-head.json: the ops log's anchor, rewritten by every recorded action;
 *  - .locks/: the install's advisory lock files.
 * Everything else (secrets, PKI, dforge.yaml, ...) must be left exactly as it was; the runtime
 * catalog is compared per tenant (catalog:<slug>, catalog-password:<slug>).
 */
const CATALOG_FILE = 'runtime/tenants/catalog.json';
const PUBLISHED_FILE = 'runtime/tenants-published.json';
const INSTALL_WRITES = [/^data\//, /^run\//, /^backups\//, /^state\/backups\//, /^state\/ops-log-head\.json$/, /^\.locks\//];

/** The cluster's own configuration and key files, compared by content. */
const SERVER_FILES = ['pg_hba.conf', 'pg_ident.conf', 'postgresql.conf', 'postgresql.auto.conf', 'dforge.conf', 'server.key', 'server.crt', 'root.crt', 'PG_VERSION'];

export interface SnapshotOptions {
  /** Databases whose objects are fingerprinted (besides postgres, template1, dforge_control). */
  readonly tenantDatabases: readonly string[];
  /** Files a trap would create if it ever ran a program on the server. */
  readonly markerDir: string;
}

export async function snapshotWorld(install: EmbeddedInstall, access: ClusterAccess, options: SnapshotOptions): Promise<WorldSnapshot> {
  const snap: WorldSnapshot = new Map();
  await withClient(access.superuser('postgres'), async (su) => {
    const roles = await su.query<Record<string, unknown> & {rolname: string; rolpassword: string | null}>(
      `SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil, rolpassword FROM pg_authid`,
    );
    for (const r of roles.rows) {
      for (const [k, v] of Object.entries(r)) {
        if (k === 'rolname') continue;
        // Never print a verifier: its hash is enough to see that it changed.
        snap.set(`role:${r.rolname}/${k}`, k === 'rolpassword' ? (v === null ? 'null' : `sha:${sha(String(v))}`) : JSON.stringify(v));
      }
    }
    const members = await su.query<{role: string; member: string; props: unknown}>(
      `SELECT r.rolname AS role, m.rolname AS member, to_jsonb(am) - 'oid' - 'roleid' - 'member' - 'grantor' AS props
         FROM pg_auth_members am JOIN pg_authid r ON r.oid = am.roleid JOIN pg_authid m ON m.oid = am.member`,
    );
    for (const m of members.rows) snap.set(`member:${m.member}>${m.role}`, JSON.stringify(m.props));
    const dbs = await su.query<{datname: string; owner: string; datconnlimit: number; datallowconn: boolean; datistemplate: boolean; acl: string[]}>(
      `SELECT datname, pg_get_userbyid(datdba) AS owner, datconnlimit, datallowconn, datistemplate,
              (SELECT array_agg(format('%s=%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END) ORDER BY 1)
                 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a) AS acl
         FROM pg_database d`,
    );
    for (const d of dbs.rows) {
      snap.set(`db:${d.datname}/owner`, d.owner);
      snap.set(`db:${d.datname}/datconnlimit`, String(d.datconnlimit));
      snap.set(`db:${d.datname}/datallowconn`, String(d.datallowconn));
      snap.set(`db:${d.datname}/datistemplate`, String(d.datistemplate));
      snap.set(`db:${d.datname}/acl`, JSON.stringify(d.acl ?? []));
    }
    const settings = await su.query<{db: string; role: string; setconfig: string[]}>(
      `SELECT coalesce(d.datname, '*') AS db, coalesce(r.rolname, '*') AS role, s.setconfig
         FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_authid r ON r.oid = s.setrole`,
    );
    for (const s of settings.rows) snap.set(`setting:${s.db}/${s.role}`, JSON.stringify(s.setconfig));
    if ((await su.query("SELECT to_regclass('pg_catalog.pg_parameter_acl') IS NOT NULL AS ok")).rows[0].ok) {
      for (const p of (await su.query<{parname: string; acl: string}>('SELECT parname, paracl::text AS acl FROM pg_parameter_acl')).rows) snap.set(`paracl:${p.parname}`, p.acl);
    }
  });
  for (const db of ['postgres', 'template1', 'dforge_control', ...options.tenantDatabases]) {
    await withClient(access.superuser(db), async (su) => {
      for (const [k, v] of await fingerprintDatabase(su)) snap.set(`obj:${db}:${k}`, v);
    });
  }
  await withClient(access.superuser('dforge_control'), async (su) => {
    await su.query('SET search_path = dforge');
    for (const t of (await su.query<{slug: string; v: string}>("SELECT slug, concat_ws('|', region, cluster, role_name, database_name, status, connection_limit) AS v FROM tenants")).rows) {
      snap.set(`control:tenants:${t.slug}`, t.v);
    }
    for (const t of (await su.query<{slug: string; v: Buffer}>("SELECT slug, convert_to(encode(sealed_password, 'hex') || '|' || coalesce(encode(pending_sealed_password, 'hex'), ''), 'UTF8') AS v FROM tenant_credentials")).rows) {
      snap.set(`control:credentials:${t.slug}`, `sha:${sha(t.v)}`);
    }
    for (const k of (await su.query<{owner: string; version: number; state: string}>('SELECT owner, version, state FROM data_keys')).rows) {
      snap.set(`control:datakeys:${k.owner}:v${k.version}`, k.state);
    }
  });
  for (const f of SERVER_FILES) {
    const bytes = await fs.readFile(path.join(access.dataDir, f)).catch(() => undefined);
    snap.set(`server:${f}`, bytes ? `sha:${sha(bytes)}` : 'absent');
  }
  for (const [rel, hash] of await hashTree(install.dir.root)) {
    if (INSTALL_WRITES.some((re) => re.test(rel))) continue;
    // The app's tenant catalog is shared by every tenant: each entry, and each password file,
    // belongs to its tenant; the rest of the file (its version, its modes) to nobody.
    const password = /^runtime\/tenants\/([a-z0-9-]+)\.password$/.exec(rel);
    if (password) snap.set(`catalog-password:${password[1]}`, hash);
    else if (rel === PUBLISHED_FILE) {
      // What the last publication wrote, one entry per tenant: each belongs to its tenant. Its file
      // stamp is bookkeeping (a re-created file has a new one); the sealed password is the fact.
      for (const [slug, entry] of Object.entries(JSON.parse(await fs.readFile(path.join(install.dir.root, rel), 'utf8')) as Record<string, {sealed: string}>)) {
        snap.set(`catalog-published:${slug}`, entry.sealed);
      }
      snap.set(`file:${rel}`, hash.split(' sha:')[0]!);
    } else if (rel === CATALOG_FILE) {
      const {tenants, ...rest} = JSON.parse(await fs.readFile(path.join(install.dir.root, rel), 'utf8')) as {tenants: Array<{slug: string}>};
      for (const entry of tenants) snap.set(`catalog:${entry.slug}`, `sha:${sha(Buffer.from(JSON.stringify(entry)))}`);
      snap.set(`file:${rel}`, `${hash.split(' sha:')[0]} rest:${sha(Buffer.from(JSON.stringify(rest)))}`);
    } else snap.set(`file:${rel}`, hash);
  }
  for (const f of await fs.readdir(options.markerDir).catch(() => [] as string[])) snap.set(`marker:${f}`, 'present');
  return snap;
}

/** Objects of one database that nobody but their owner (never a tenant of another database) may change. */
async function fingerprintDatabase(c: pg.Client): Promise<Array<[string, string]>> {
  const out: Array<[string, string]> = [];
  const q = async (sql: string): Promise<Array<{k: string; v: string}>> => (await c.query<{k: string; v: string}>(sql)).rows;
  const user = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'";
  for (const r of await q(`SELECT 'schema:' || n.nspname AS k, pg_get_userbyid(n.nspowner) || ' ' || coalesce(n.nspacl::text, '') AS v FROM pg_namespace n WHERE ${user}`)) out.push([r.k, r.v]);
  for (const r of await q(`SELECT 'rel:' || n.nspname || '.' || c.relname AS k, concat_ws(' ', c.relkind, pg_get_userbyid(c.relowner), c.relacl::text, c.relrowsecurity, c.relforcerowsecurity) AS v FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${user}`)) out.push([r.k, r.v]);
  for (const r of await q(`SELECT 'fn:' || p.oid::regprocedure::text AS k, concat_ws(' ', pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig::text, md5(p.prosrc), p.proacl::text) AS v FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${user}`)) out.push([r.k, r.v]);
  // Grants on built-in functions (pg_read_file and friends are granted per database).
  for (const r of await q("SELECT 'catalog-fn-acl:' || p.oid::regprocedure::text AS k, p.proacl::text AS v FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proacl IS NOT NULL")) out.push([r.k, r.v]);
  for (const r of await q(`SELECT 'trigger:' || t.tgrelid::regclass::text || '.' || t.tgname AS k, concat_ws(' ', t.tgenabled, t.tgfoid::regprocedure::text) AS v FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND ${user}`)) out.push([r.k, r.v]);
  for (const r of await q("SELECT 'event-trigger:' || evtname AS k, concat_ws(' ', evtevent, evtenabled, pg_get_userbyid(evtowner), evtfoid::regprocedure::text, evttags::text) AS v FROM pg_event_trigger")) out.push([r.k, r.v]);
  for (const r of await q(`SELECT 'policy:' || p.polrelid::regclass::text || '.' || p.polname AS k, concat_ws(' ', p.polcmd, p.polpermissive, p.polroles::text, pg_get_expr(p.polqual, p.polrelid)) AS v FROM pg_policy p`)) out.push([r.k, r.v]);
  for (const r of await q("SELECT 'rule:' || r.ev_class::regclass::text || '.' || r.rulename AS k, md5(pg_get_ruledef(r.oid)) AS v FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.rulename <> '_RETURN' AND " + user)) out.push([r.k, r.v]);
  for (const r of await q("SELECT 'default-acl:' || coalesce(defaclnamespace::regnamespace::text, '*') || '/' || pg_get_userbyid(defaclrole) || '/' || defaclobjtype::text AS k, defaclacl::text AS v FROM pg_default_acl")) out.push([r.k, r.v]);
  if ((await c.query("SELECT to_regclass('audit.change_log') IS NOT NULL AS ok")).rows[0].ok) {
    // The audit trail's content: another tenant's log must not lose, gain or change a row.
    for (const r of await q("SELECT 'audit-log' AS k, count(*) || ' ' || coalesce(md5(string_agg(l::text, '|' ORDER BY l.id)), '') AS v FROM audit.change_log l")) out.push([r.k, r.v]);
  }
  return out;
}

async function hashTree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, {withFileTypes: true}).catch(() => [])) {
      const full = path.join(dir, entry.name);
      const rel = path.relative(root, full);
      if (entry.isDirectory()) {
        if (INSTALL_WRITES.some((re) => re.test(`${rel}/`))) continue;
        const st = await fs.stat(full);
        out.set(`${rel}/`, `dir ${(st.mode & 0o7777).toString(8)} ${st.uid}`);
        await walk(full);
      } else if (entry.isFile()) {
        const st = await fs.stat(full);
        out.set(rel, `${(st.mode & 0o7777).toString(8)} ${st.uid} sha:${sha(await fs.readFile(full))}`);
      } else if (entry.isSymbolicLink()) {
        out.set(rel, `link -> ${await fs.readlink(full)}`);
      }
    }
  };
  await walk(root);
  return out;
}

/** One line per difference: `+ key = value`, `- key`, `~ key: before -> after`. */
export function diffWorld(before: WorldSnapshot, after: WorldSnapshot, allowed: readonly RegExp[] = []): string[] {
  const lines: string[] = [];
  for (const key of new Set([...before.keys(), ...after.keys()])) {
    if (allowed.some((re) => re.test(key))) continue;
    const a = before.get(key);
    const b = after.get(key);
    if (a === b) continue;
    if (a === undefined) lines.push(`+ ${key} = ${b}`);
    else if (b === undefined) lines.push(`- ${key} (was ${a})`);
    else lines.push(`~ ${key}: ${a} -> ${b}`);
  }
  return lines.sort();
}

/**
 * Snapshot keys that belong to one tenant: its roles (tenant_x, tenant_x__owner, tenant_x__restore,
 * ...), its databases (live, scratch, kept pre-restore copies), memberships of its roles, and its
 * control-plane rows.
 */
export function tenantKeys(slug: string): RegExp[] {
  const r = reEscape(tenantRole(slug));
  const s = reEscape(slug);
  return [
    new RegExp(`^role:${r}(__[a-z]+)?/`),
    new RegExp(`^db:${r}(__restore|__(pre_restore|pr)_[0-9a-z]+)?/`),
    // Any membership of its roles (granted or, when it is deleted, dropped with them); which ones
    // may exist at all is what roleGraphViolations() checks.
    new RegExp(`^member:${r}(__[a-z]+)?>`),
    new RegExp(`^member:[^>]+>${r}(__[a-z]+)?$`),
    new RegExp(`^setting:${r}(__restore|__(pre_restore|pr)_[0-9a-z]+)?/`),
    new RegExp(`^setting:\\*/${r}(__[a-z]+)?$`),
    new RegExp(`^control:(tenants|credentials):${s}$`),
    new RegExp(`^control:datakeys:${s}:`),
    new RegExp(`^catalog(-password|-published)?:${s}$`),
  ];
}

/** Kept copies of a tenant's database that a restore leaves behind (dropped by a prune). */
export const preRestoreCopies = (slug: string): RegExp => new RegExp(`^(db|setting):${reEscape(tenantRole(slug))}__(pre_restore|pr)_[0-9a-z]+/`);

// ---------------------------------------------------------------------------------------------
// Invariants that hold after every command, whatever the diff

/** Security invariants of the role graph; each violation is one line. */
export async function roleGraphViolations(access: ClusterAccess): Promise<string[]> {
  return withClient(access.superuser('postgres'), async (su) => {
    const out: string[] = [];
    const [p] = (await su.query<{rolsuper: boolean; rolcreaterole: boolean; rolreplication: boolean; rolbypassrls: boolean}>("SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = 'dforge_provisioner'")).rows;
    if (!p) out.push('dforge_provisioner is missing');
    else {
      if (p.rolsuper) out.push('dforge_provisioner is SUPERUSER');
      if (p.rolcreaterole) out.push('dforge_provisioner has CREATEROLE');
      if (p.rolreplication) out.push('dforge_provisioner has REPLICATION');
      if (p.rolbypassrls) out.push('dforge_provisioner has BYPASSRLS');
    }
    const members = await su.query<{role: string; member: string}>('SELECT r.rolname AS role, m.rolname AS member FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member');
    const tenantOf = (role: string): string | undefined => /^(tenant_[a-z0-9_]+?)(__[a-z]+)?$/.exec(role)?.[1];
    for (const {role, member} of members.rows) {
      if (role === 'dforge_provisioner' || member === 'dforge_provisioner') out.push(`membership involving the provisioner: ${member} is a member of ${role}`);
      const tm = tenantOf(member);
      if (tm && role.startsWith('pg_')) out.push(`tenant role ${member} is a member of predefined role ${role}`);
      const tr = tenantOf(role);
      if (tm && tr && tm !== tr) out.push(`tenant role ${member} is a member of another tenant's role ${role}`);
      if (tr && !tm && member !== 'dforge_admin') out.push(`non-tenant role ${member} is a member of tenant role ${role}`);
      // The app's login role must never reach its owner role (that one owns the audit trail).
      if (tm && member === tm && role !== member && tr === tm) out.push(`tenant login role ${member} is a member of its own ${role}`);
      if (/__restore$/.test(role) || /__restore$/.test(member)) out.push(`transient restore role left behind: ${member} > ${role}`);
    }
    for (const r of (await su.query<{rolname: string}>("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%\\_\\_restore'")).rows) out.push(`transient restore role left behind: ${r.rolname}`);
    for (const r of (await su.query<{rolname: string; rolsuper: boolean; rolcreaterole: boolean; rolcreatedb: boolean; rolreplication: boolean; rolbypassrls: boolean}>(
      "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname LIKE 'tenant\\_%'",
    )).rows) {
      for (const attr of ['rolsuper', 'rolcreaterole', 'rolcreatedb', 'rolreplication', 'rolbypassrls'] as const) if (r[attr]) out.push(`tenant role ${r.rolname} has ${attr}`);
    }
    for (const d of (await su.query<{datname: string}>("SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_%' AND has_database_privilege('public', oid, 'CONNECT')")).rows) {
      out.push(`PUBLIC may connect to ${d.datname}`);
    }
    return out.sort();
  });
}

// ---------------------------------------------------------------------------------------------
// The traps a hostile tenant plants

/** What each trap function tries when it runs in a session that is not the tenant's own. */
export interface TrapAttempt {
  readonly label: string;
  /** A PL/pgSQL expression that yields the statement to EXECUTE. */
  readonly statement: string;
  /**
   * A boolean SQL expression that must hold afterwards for the attempt to count as done, for
   * statements that "succeed" without effect (a GRANT without grant option only warns).
   */
  readonly verify?: string;
}

export function trapAttempts(slug: string, marker: string): TrapAttempt[] {
  const me = tenantRole(slug);
  const lit = (s: string): string => escapeLiteral(s);
  const fixed = (label: string, sql = label): TrapAttempt => ({label, statement: lit(sql)});
  return [
    fixed('SET ROLE tenant_globex'),
    fixed('SET ROLE dforge_provisioner'),
    fixed('SET ROLE dforge_admin'),
    fixed(`SET ROLE ${me}__owner`),
    fixed("ALTER ROLE tenant_globex PASSWORD 'pwned'"),
    fixed('ALTER ROLE tenant_globex CONNECTION LIMIT -1'),
    fixed(`ALTER ROLE ${me} CREATEROLE CREATEDB`),
    fixed(`ALTER ROLE ${me} CONNECTION LIMIT -1`),
    {label: 'GRANT pg_execute_server_program TO <session_user>', statement: "format('GRANT pg_execute_server_program TO %I', session_user)"},
    fixed(`GRANT pg_execute_server_program TO ${me}`),
    {label: 'GRANT pg_read_server_files TO <session_user>', statement: "format('GRANT pg_read_server_files TO %I', session_user)"},
    fixed(`GRANT pg_read_server_files TO ${me}`),
    fixed(`GRANT pg_write_server_files TO ${me}`),
    fixed(`GRANT tenant_globex TO ${me}`),
    fixed(`GRANT dforge_provisioner TO ${me}`),
    fixed(`GRANT ${me}__owner TO ${me}`),
    fixed('CREATE ROLE evil SUPERUSER LOGIN'),
    fixed("CREATE ROLE dforge_evil LOGIN PASSWORD 'pwned'"),
    fixed('CREATE DATABASE dforge_evil'),
    fixed(`COPY (SELECT 1) TO PROGRAM 'touch ${marker}'`),
    fixed("SELECT length(pg_read_file('postgresql.conf'))"),
    fixed("SELECT length(pg_read_file('server.key'))"),
    fixed("COPY crm.loot (line) FROM 'server.key'"),
    fixed("ALTER SYSTEM SET log_statement = 'none'"),
    fixed('SET session_replication_role = replica'),
    fixed(`ALTER DATABASE ${me} CONNECTION LIMIT -1`),
    {label: 'ALTER DATABASE <current_database()> CONNECTION LIMIT -1', statement: "format('ALTER DATABASE %I CONNECTION LIMIT -1', current_database())"},
    {...fixed(`GRANT CONNECT ON DATABASE ${me} TO PUBLIC`), verify: `has_database_privilege('public', ${escapeLiteral(me)}, 'CONNECT')`},
    {label: 'GRANT CONNECT ON DATABASE <current_database()> TO PUBLIC', statement: "format('GRANT CONNECT ON DATABASE %I TO PUBLIC', current_database())", verify: "has_database_privilege('public', current_database(), 'CONNECT')"},
    {label: 'ALTER DATABASE <current_database()> SET search_path', statement: "format('ALTER DATABASE %I SET search_path = crm, public, pg_catalog', current_database())"},
    fixed('ALTER DATABASE tenant_globex CONNECTION LIMIT -1'),
    fixed("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'tenant_globex'"),
    fixed('DELETE FROM audit.change_log'),
    fixed("UPDATE audit.change_log SET actor = 'pwned'"),
    fixed('TRUNCATE audit.change_log'),
    fixed("INSERT INTO audit.change_log (schema_name, table_name, operation) VALUES ('forged', 'forged', 'DELETE')"),
    fixed("COMMENT ON TABLE audit.change_log IS 'pwned'"),
    fixed("COMMENT ON FUNCTION audit.log_change() IS 'pwned'"),
    fixed('ALTER TABLE crm.victim ENABLE REPLICA TRIGGER dforge_change_log'),
    fixed('ALTER TABLE crm.victim DISABLE TRIGGER dforge_change_log'),
    fixed('DROP TRIGGER dforge_change_log ON crm.victim'),
  ];
}

/** The kinds of trap planted, each calling crm.trap(kind) in its own way. */
export const TRAP_KINDS = [
  'check', 'domain', 'generated', 'default', 'row_trigger', 'statement_trigger', 'index', 'matview',
  'operator', 'cast', 'rls', 'rule', 'shadow_crm', 'shadow_public', 'shadow_user',
] as const;

/**
 * The hostile tenant's objects, created from its own session. Each trap function, when it runs
 * in a session whose session_user is not the tenant's own role, first tries RESET ROLE (to escape
 * an operator's SET ROLE), then every attempt of trapAttempts() in its own subtransaction, puts
 * the role back, and records the outcomes in crm.trap_log. It never raises, so the operator's
 * command is not stopped by it: it is the privilege, not the failure, that the suite looks for.
 *
 * `core` must succeed for every tenant (the module schema crm is the tenant's to use); `bestEffort`
 * statements are what a tenant would also try but a fixed install forbids (objects in public, a
 * schema named after dforge's roles, which then sits first on their search_path as "$user").
 * `matview: false` leaves out the materialized view (for a restore that must get past today's
 * object-count check, which counts a materialized view as a view).
 */
export function hostileObjectsSql(slug: string, marker: string, options: {matview?: boolean} = {}): {core: string; bestEffort: Array<{label: string; sql: string}>} {
  const me = tenantRole(slug);
  const blocks = trapAttempts(slug, marker)
    .map(
      (a) => `
  BEGIN
    EXECUTE ${a.statement};
    GET DIAGNOSTICS n = ROW_COUNT;${a.verify ? `
    IF NOT coalesce(${a.verify}, false) THEN RAISE EXCEPTION 'no effect'; END IF;` : ''}
    attempt := ${escapeLiteral(a.label)}; ok := true; detail := 'as ' || current_user || ', rows ' || n; RETURN NEXT;
  EXCEPTION WHEN OTHERS THEN
    attempt := ${escapeLiteral(a.label)}; ok := false; detail := SQLERRM; RETURN NEXT;
  END;
  BEGIN EXECUTE format('SET ROLE %I', base); EXCEPTION WHEN OTHERS THEN NULL; END;`,
    )
    .join('');
  const shadowOperator = (schema: string, kind: string): string => `
CREATE FUNCTION ${schema}.trap_name_nlike(name, name) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN PERFORM crm.trap('${kind}'); EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN NOT ($1::text OPERATOR(pg_catalog.~~) $2::text);
END $f$;
CREATE OPERATOR ${schema}.!~~ (LEFTARG = name, RIGHTARG = name, FUNCTION = ${schema}.trap_name_nlike);
CREATE FUNCTION ${schema}.trap_oid_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN PERFORM crm.trap('${kind}'); EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN $1 OPERATOR(pg_catalog.=) $2;
END $f$;
CREATE OPERATOR ${schema}.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = ${schema}.trap_oid_eq);
CREATE FUNCTION ${schema}.lower(text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN PERFORM crm.trap('${kind}'); EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN pg_catalog.lower($1);
END $f$;
CREATE FUNCTION ${schema}.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN PERFORM crm.trap('${kind}'); EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN pg_catalog.now();
END $f$;
`;
  const core = `
CREATE TABLE crm.trap_log (at timestamptz NOT NULL DEFAULT clock_timestamp(), kind text, sess text, cur text, db text, attempt text, ok boolean, detail text);
CREATE TABLE crm.loot (line text);

CREATE FUNCTION crm.trap_attempts() RETURNS TABLE (attempt text, ok boolean, detail text)
LANGUAGE plpgsql VOLATILE AS $trap$
DECLARE
  orig text := current_user;
  base text;
  n bigint;
BEGIN
  BEGIN
    RESET ROLE;
    attempt := 'RESET ROLE'; ok := true; detail := 'now ' || current_user; RETURN NEXT;
  EXCEPTION WHEN OTHERS THEN
    attempt := 'RESET ROLE'; ok := false; detail := SQLERRM; RETURN NEXT;
  END;
  base := current_user;
${blocks}
  BEGIN EXECUTE format('SET ROLE %I', orig); EXCEPTION WHEN OTHERS THEN NULL; END;
END
$trap$;

CREATE FUNCTION crm.trap(kind text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $trap$
DECLARE
  r record;
  guard text := 'dforge_trap.' || kind;
BEGIN
  IF session_user = ${escapeLiteral(me)} THEN RETURN true; END IF;
  -- Once per session, database and kind: the attack is the same for every row.
  BEGIN
    IF coalesce(current_setting(guard, true), '') = current_database() THEN RETURN true; END IF;
    PERFORM set_config(guard, current_database(), false);
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  FOR r IN SELECT * FROM crm.trap_attempts() LOOP
    BEGIN
      INSERT INTO crm.trap_log (kind, sess, cur, db, attempt, ok, detail) VALUES (kind, session_user, current_user, current_database(), r.attempt, r.ok, r.detail);
    EXCEPTION WHEN OTHERS THEN
      RAISE NOTICE 'trap % in %: % ok=% (not logged: %)', kind, current_database(), r.attempt, r.ok, SQLERRM;
    END;
  END LOOP;
  RETURN true;
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE 'trap %: %', kind, SQLERRM;
  RETURN true;
END
$trap$;

-- Volatile helpers, and IMMUTABLE-declared ones for generated columns and index expressions.
CREATE FUNCTION crm.trap_bool(kind text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$ BEGIN RETURN crm.trap(kind); END $f$;
CREATE FUNCTION crm.trap_int(kind text) RETURNS integer LANGUAGE plpgsql VOLATILE AS $f$ BEGIN PERFORM crm.trap(kind); RETURN 1; END $f$;
CREATE FUNCTION crm.trap_imm(kind text, v integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN PERFORM crm.trap(kind); RETURN v; END $f$;
CREATE FUNCTION crm.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM crm.trap(TG_ARGV[0]);
  IF TG_LEVEL = 'ROW' THEN RETURN NEW; END IF;
  RETURN NULL;
END $f$;

CREATE DOMAIN crm.trapped_int AS integer CHECK (crm.trap_bool('domain'));

CREATE TYPE crm.mood AS ENUM ('ok', 'meh');
CREATE FUNCTION crm.mood_to_int(crm.mood) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN PERFORM crm.trap('cast'); RETURN 1; END $f$;
CREATE CAST (crm.mood AS integer) WITH FUNCTION crm.mood_to_int(crm.mood);

CREATE FUNCTION crm.same(integer, integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN PERFORM crm.trap('operator'); RETURN $1 = $2; END $f$;
CREATE OPERATOR crm.=== (LEFTARG = integer, RIGHTARG = integer, FUNCTION = crm.same);

CREATE TABLE crm.hostile (
  a  integer PRIMARY KEY CHECK (crm.trap_bool('check')),
  d  crm.trapped_int,
  g  integer GENERATED ALWAYS AS (crm.trap_imm('generated', a)) STORED,
  df integer DEFAULT crm.trap_int('default'),
  m  crm.mood NOT NULL DEFAULT 'ok' CHECK ((m)::integer > 0),
  o  integer CHECK (o OPERATOR(crm.===) o)
);
CREATE INDEX hostile_expr ON crm.hostile ((crm.trap_imm('index', a)));
CREATE INDEX hostile_cast ON crm.hostile (((m)::integer));
CREATE INDEX hostile_op ON crm.hostile (((o OPERATOR(crm.===) 1)));
CREATE TRIGGER hostile_row BEFORE INSERT OR UPDATE OR DELETE ON crm.hostile FOR EACH ROW EXECUTE FUNCTION crm.trap_trigger('row_trigger');
CREATE TRIGGER hostile_stmt AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.hostile FOR EACH STATEMENT EXECUTE FUNCTION crm.trap_trigger('statement_trigger');
CREATE RULE hostile_rule AS ON UPDATE TO crm.hostile DO ALSO SELECT crm.trap_bool('rule');
ALTER TABLE crm.hostile ENABLE ROW LEVEL SECURITY;
CREATE POLICY hostile_policy ON crm.hostile USING (crm.trap_bool('rls'));
INSERT INTO crm.hostile (a, d, o) SELECT g, g, g FROM generate_series(1, 5) g;
${options.matview === false ? '' : "CREATE MATERIALIZED VIEW crm.hostile_mv AS SELECT a, crm.trap_int('matview') AS t FROM crm.hostile;"}

-- A plain table with rows, for the change-log trigger attacks (audited like any tenant table).
CREATE TABLE crm.victim (id integer PRIMARY KEY, v text);
INSERT INTO crm.victim SELECT g, 'row ' || g FROM generate_series(1, 5) g;
${shadowOperator('crm', 'shadow_crm')}
`;
  const bestEffort = [
    // Attach the change log where the install still needs it to be called (harmless if it is automatic).
    {label: 'audit.attach_all()', sql: 'SELECT audit.attach_all()'},
    {label: 'shadowing operators in public', sql: shadowOperator('public', 'shadow_public')},
    ...['dforge_provisioner', 'dforge_admin', `${me}__restore`, `${me}__owner`, 'postgres'].map((schema) => ({
      label: `schema ${schema} with shadowing operators`,
      sql: `CREATE SCHEMA ${escapeIdentifier(schema)}; ${shadowOperator(escapeIdentifier(schema), 'shadow_user')}`,
    })),
  ];
  return {core, bestEffort};
}

/** The trap log: what every trap that fired outside the tenant's own session tried, and how it went. */
export interface TrapLogRow {
  kind: string;
  sess: string;
  cur: string;
  db: string;
  attempt: string;
  ok: boolean;
  detail: string;
}

/** A fresh directory where a successful COPY ... TO PROGRAM would leave a file; the server account can write to it. */
export async function markerDirectory(): Promise<string> {
  const dir = path.join(os.tmpdir(), `dforge-adversarial-${randomBytes(4).toString('hex')}`);
  await fs.mkdir(dir);
  await fs.chmod(dir, 0o1777);
  return dir;
}
