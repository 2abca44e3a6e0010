/**
 * THE TENANT'S OWN LOGIN ROLE AS AN ATTACKER (tenant_acme, in its own database, as its app is):
 *   - its audit trail: DELETE / UPDATE / TRUNCATE / DROP of audit.change_log; ALTER TABLE on it
 *     (columns, name, triggers, RLS, logging, owner); triggers and rules on it; DROP, replace,
 *     rename or re-own audit.log_change(); objects in, or the drop or rename of, schema audit;
 *   - the change-log triggers of its own table: DROP TRIGGER, ALTER TABLE ... DISABLE TRIGGER
 *     (by name, USER, ALL), ENABLE REPLICA TRIGGER, CREATE OR REPLACE TRIGGER pointing
 *     dforge_change_log at its own function, ALTER TRIGGER ... RENAME (row and TRUNCATE triggers);
 *   - its database and role: GRANT CONNECT ... TO PUBLIC, ALTER DATABASE connection limit /
 *     SET search_path, ALTER ROLE connection limit / CREATEROLE, SET session_replication_role,
 *     SET ROLE to its owner role, CREATE SCHEMA (e.g. one named like dforge's roles), objects in
 *     public, dropping or taking over its module schemas.
 * Each must fail: it errors, or (checked in the same transaction before it is rolled back) it has
 * no effect. What the app needs keeps working: CREATE TABLE, INSERT/UPDATE/DELETE/TRUNCATE,
 * ALTER TABLE ADD COLUMN, CREATE INDEX, DROP TABLE of its own tables, partitioned tables. A table
 * it creates, in any module schema and under any name, is audited from its first insert, with
 * nobody calling an attach function: triggers dforge_change_log (row) and
 * dforge_change_log_truncate (statement).
 */
import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {attemptWithEffect, clusterAccess, withClient, type ClusterAccess} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** What an action could change, read in the same transaction right after it. */
const STATE = {
  changeLog: "SELECT count(*) || ' ' || coalesce(md5(string_agg(l::text, '|' ORDER BY l.id)), '') AS s FROM audit.change_log l",
  triggers: (table: string): string =>
    `SELECT coalesce(string_agg(concat_ws(' ', tgname, tgenabled, tgfoid::regprocedure::text, tgtype), ', ' ORDER BY tgname), '') AS s FROM pg_trigger WHERE tgrelid = to_regclass('${table}') AND NOT tgisinternal`,
  logChangeFunction:
    "SELECT coalesce((SELECT concat_ws(' ', p.oid, pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig::text, md5(p.prosrc), p.proname) FROM pg_proc p WHERE p.oid = to_regprocedure('audit.log_change()')), 'gone') AS s",
  changeLogTable: `SELECT coalesce((SELECT concat_ws(' ', c.oid, c.relname, pg_get_userbyid(c.relowner), c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relacl::text,
      (SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
      (SELECT string_agg(tgname || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = c.oid),
      (SELECT string_agg(rulename, ',') FROM pg_rewrite WHERE ev_class = c.oid))
    FROM pg_class c WHERE c.oid = to_regclass('audit.change_log')), 'gone') AS s`,
  auditSchema: "SELECT coalesce((SELECT concat_ws(' ', nspname, pg_get_userbyid(nspowner), nspacl::text, (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid), (SELECT count(*) FROM pg_proc WHERE pronamespace = n.oid)) FROM pg_namespace n WHERE nspname = 'audit'), 'gone') AS s",
  publicConnect: "SELECT has_database_privilege('public', 'tenant_acme', 'CONNECT')::text AS s",
  databaseSettings: "SELECT concat_ws(' ', d.datconnlimit, d.datallowconn, pg_get_userbyid(d.datdba), (SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)) AS s FROM pg_database d WHERE datname = 'tenant_acme'",
  role: "SELECT concat_ws(' ', rolconnlimit, rolcreaterole, rolcreatedb, rolsuper) AS s FROM pg_roles WHERE rolname = 'tenant_acme'",
  replicationRole: "SELECT current_setting('session_replication_role') AS s",
  currentUser: 'SELECT current_user::text AS s',
  schemas: "SELECT string_agg(concat_ws(' ', nspname, pg_get_userbyid(nspowner), nspacl::text), ', ' ORDER BY nspname) AS s FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
  publicObjects: "SELECT count(*)::text AS s FROM pg_class WHERE relnamespace = 'public'::regnamespace",
  publicFunctions: "SELECT count(*)::text AS s FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
};

describe.skipIf(!available)("the tenant's login role cannot touch its audit trail, its fences or anyone else; its app keeps working", () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let c: pg.Client;

  /** The actions of a list that went through. */
  async function done(actions: ReadonlyArray<[string, string]>): Promise<string[]> {
    const out: string[] = [];
    for (const [sql, probe] of actions) {
      const r = await attemptWithEffect(c, sql, probe);
      if (r.done) out.push(r.sql);
    }
    return out;
  }

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    const plane = await install.plane();
    try {
      c = new pg.Client(install.clientConfig('tenant_acme', await install.tenantPassword(plane, 'acme'), 'tenant_acme'));
    } finally {
      await plane.close();
    }
    await c.connect();
    await c.query('CREATE TABLE crm.app (id serial PRIMARY KEY, v text)');
    // Where the change log must still be attached by hand, attach it, so the trigger attacks below
    // have a trigger to attack (with automatic attachment this call is redundant or absent).
    await c.query("SELECT audit.attach_change_log('crm.app')").catch(() => undefined);
    await c.query("INSERT INTO crm.app (v) VALUES ('one'), ('two'), ('three')");
    await c.query("UPDATE crm.app SET v = 'uno' WHERE id = 1");
    await c.query('CREATE FUNCTION crm.swallow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$');
  });
  afterAll(async () => {
    await c?.end().catch(() => undefined);
    await install?.cleanup();
  });

  it('precondition: its table carries both change-log triggers and the log has rows to lose', async () => {
    const triggers = await withClient(access.superuser('tenant_acme'), async (su) =>
      (await su.query<{tgname: string; tgenabled: string; fn: string}>("SELECT tgname, tgenabled, tgfoid::regproc::text AS fn FROM pg_trigger WHERE tgrelid = 'crm.app'::regclass AND NOT tgisinternal ORDER BY 1")).rows,
    );
    expect(triggers).toEqual([
      {tgname: 'dforge_change_log', tgenabled: 'O', fn: expect.stringMatching(/^audit\./)},
      {tgname: 'dforge_change_log_truncate', tgenabled: 'O', fn: expect.stringMatching(/^audit\./)},
    ]);
    expect(Number((await c.query('SELECT count(*) AS n FROM audit.change_log')).rows[0].n)).toBeGreaterThanOrEqual(4);
  });

  it('cannot erase or rewrite its audit trail', async () => {
    expect(
      await done([
        ['DELETE FROM audit.change_log', STATE.changeLog],
        ['DELETE FROM audit.change_log WHERE id = (SELECT max(id) FROM audit.change_log)', STATE.changeLog],
        ["UPDATE audit.change_log SET actor = 'someone else'", STATE.changeLog],
        ['UPDATE audit.change_log SET after = NULL', STATE.changeLog],
        ['TRUNCATE audit.change_log', STATE.changeLog],
        ['TRUNCATE audit.change_log CASCADE', STATE.changeLog],
        ['DROP TABLE audit.change_log', STATE.changeLogTable],
        ['DROP TABLE audit.change_log CASCADE', STATE.changeLogTable],
      ]),
    ).toEqual([]);
  });

  it("cannot drop, disable, redirect or rename the change-log triggers of its own table", async () => {
    const t = STATE.triggers('crm.app');
    expect(
      await done([
        ['DROP TRIGGER dforge_change_log ON crm.app', t],
        ['DROP TRIGGER dforge_change_log_truncate ON crm.app', t],
        ['ALTER TABLE crm.app DISABLE TRIGGER dforge_change_log', t],
        ['ALTER TABLE crm.app DISABLE TRIGGER dforge_change_log_truncate', t],
        ['ALTER TABLE crm.app DISABLE TRIGGER USER', t],
        ['ALTER TABLE crm.app DISABLE TRIGGER ALL', t],
        ['ALTER TABLE crm.app ENABLE REPLICA TRIGGER dforge_change_log', t],
        ['ALTER TABLE crm.app ENABLE REPLICA TRIGGER dforge_change_log_truncate', t],
        ['CREATE OR REPLACE TRIGGER dforge_change_log AFTER INSERT OR UPDATE OR DELETE ON crm.app FOR EACH ROW EXECUTE FUNCTION crm.swallow()', t],
        ['CREATE OR REPLACE TRIGGER dforge_change_log_truncate AFTER TRUNCATE ON crm.app FOR EACH STATEMENT EXECUTE FUNCTION crm.swallow()', t],
        ['CREATE OR REPLACE TRIGGER dforge_change_log AFTER INSERT ON crm.app FOR EACH ROW EXECUTE FUNCTION audit.log_change()', t],
        ['ALTER TRIGGER dforge_change_log ON crm.app RENAME TO harmless', t],
        ['ALTER TRIGGER dforge_change_log_truncate ON crm.app RENAME TO harmless', t],
      ]),
    ).toEqual([]);
  });

  it('cannot drop, replace or alter audit.log_change() or audit.change_log, or plant anything in schema audit', async () => {
    expect(
      await done([
        ['DROP FUNCTION audit.log_change()', STATE.logChangeFunction],
        ['DROP FUNCTION audit.log_change() CASCADE', STATE.logChangeFunction],
        ['CREATE OR REPLACE FUNCTION audit.log_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$', STATE.logChangeFunction],
        ['ALTER FUNCTION audit.log_change() RENAME TO log_change_old', STATE.logChangeFunction],
        ['ALTER FUNCTION audit.log_change() OWNER TO tenant_acme', STATE.logChangeFunction],
        ['ALTER FUNCTION audit.log_change() SET search_path = crm', STATE.logChangeFunction],
        ['ALTER TABLE audit.change_log ADD COLUMN note text', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log DROP COLUMN before', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log RENAME TO change_log_old', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log DISABLE TRIGGER ALL', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log ENABLE ROW LEVEL SECURITY', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log SET UNLOGGED', STATE.changeLogTable],
        ['ALTER TABLE audit.change_log OWNER TO tenant_acme', STATE.changeLogTable],
        ['CREATE TRIGGER eat BEFORE INSERT ON audit.change_log FOR EACH ROW EXECUTE FUNCTION crm.swallow()', STATE.changeLogTable],
        ['CREATE RULE eat AS ON INSERT TO audit.change_log DO INSTEAD NOTHING', STATE.changeLogTable],
        ['CREATE TABLE audit.extra (x int)', STATE.auditSchema],
        ['CREATE FUNCTION audit.extra() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$', STATE.auditSchema],
        ['ALTER SCHEMA audit RENAME TO audit_old', STATE.auditSchema],
        ['ALTER SCHEMA audit OWNER TO tenant_acme', STATE.auditSchema],
        ['DROP SCHEMA audit CASCADE', STATE.auditSchema],
      ]),
    ).toEqual([]);
  });

  it('cannot open its database to others, lift its limits, switch off triggers for its session, or become its owner role', async () => {
    expect(
      await done([
        ['GRANT CONNECT ON DATABASE tenant_acme TO PUBLIC', STATE.publicConnect],
        ['GRANT ALL ON DATABASE tenant_acme TO PUBLIC', STATE.publicConnect],
        ['ALTER DATABASE tenant_acme CONNECTION LIMIT -1', STATE.databaseSettings],
        ['ALTER DATABASE tenant_acme SET search_path = crm, public, pg_catalog', STATE.databaseSettings],
        ['ALTER DATABASE tenant_acme OWNER TO tenant_acme', STATE.databaseSettings],
        ['ALTER ROLE tenant_acme CONNECTION LIMIT -1', STATE.role],
        ['ALTER ROLE tenant_acme CREATEROLE', STATE.role],
        ['SET session_replication_role = replica', STATE.replicationRole],
        ["SELECT set_config('session_replication_role', 'replica', false)", STATE.replicationRole],
        ['SET ROLE tenant_acme__owner', STATE.currentUser],
        ['SET ROLE dforge_provisioner', STATE.currentUser],
        ['CREATE SCHEMA dforge_provisioner', STATE.schemas],
        ['CREATE SCHEMA sneaky', STATE.schemas],
        ['CREATE TABLE public.sneaky (x int)', STATE.publicObjects],
        ['CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT $1 $$', STATE.publicFunctions],
        ['ALTER SCHEMA crm RENAME TO crm_old', STATE.schemas],
        ['ALTER SCHEMA crm OWNER TO tenant_acme', STATE.schemas],
        ['DROP SCHEMA hr CASCADE', STATE.schemas],
      ]),
    ).toEqual([]);
  });

  it('keeps what an app needs: tables, rows, columns, indexes, TRUNCATE and DROP of its own tables', async () => {
    const steps = [
      'CREATE TABLE crm.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL, total numeric(12, 2))',
      "INSERT INTO crm.orders (customer, total) VALUES ('a', 10), ('b', 20)",
      "UPDATE crm.orders SET total = 15 WHERE customer = 'a'",
      "DELETE FROM crm.orders WHERE customer = 'b'",
      'ALTER TABLE crm.orders ADD COLUMN note text',
      'CREATE INDEX orders_customer ON crm.orders (customer)',
      'CREATE TABLE hr.people (id int PRIMARY KEY, name text)',
      "INSERT INTO hr.people VALUES (1, 'Zoë')",
      'TRUNCATE hr.people',
      'CREATE VIEW crm.big_orders AS SELECT * FROM crm.orders WHERE total > 10',
      'DROP VIEW crm.big_orders',
      'DROP TABLE hr.people',
      'DROP TABLE crm.orders',
    ];
    const failed: string[] = [];
    for (const sql of steps) {
      try {
        await c.query(sql);
      } catch (err) {
        failed.push(`${sql}: ${(err as Error).message}`);
      }
    }
    expect(failed).toEqual([]);
  });

  it('a table it creates is audited from its first insert, with nobody attaching anything (row and TRUNCATE triggers)', async () => {
    const since = Number((await c.query('SELECT coalesce(max(id), 0) AS m FROM audit.change_log')).rows[0].m);
    await c.query('CREATE TABLE crm.fresh (id int PRIMARY KEY, v text)');
    await c.query("INSERT INTO crm.fresh VALUES (1, 'first')");
    await c.query("UPDATE crm.fresh SET v = 'second' WHERE id = 1");
    await c.query('DELETE FROM crm.fresh WHERE id = 1');
    await c.query('TRUNCATE crm.fresh');
    const log = (await c.query("SELECT schema_name, table_name, operation, after->>'v' AS v FROM audit.change_log WHERE id > $1 AND table_name = 'fresh' ORDER BY id", [since])).rows;
    expect(log).toEqual([
      {schema_name: 'crm', table_name: 'fresh', operation: 'INSERT', v: 'first'},
      {schema_name: 'crm', table_name: 'fresh', operation: 'UPDATE', v: 'second'},
      {schema_name: 'crm', table_name: 'fresh', operation: 'DELETE', v: null},
      {schema_name: 'crm', table_name: 'fresh', operation: 'TRUNCATE', v: null},
    ]);
    const triggers = (await c.query<{tgname: string}>("SELECT tgname FROM pg_trigger WHERE tgrelid = 'crm.fresh'::regclass AND NOT tgisinternal ORDER BY 1")).rows.map((r) => r.tgname);
    expect(triggers).toEqual(['dforge_change_log', 'dforge_change_log_truncate']);
  });

  it('the same for every module schema, CREATE TABLE AS, and a table named to break quoting', async () => {
    const since = Number((await c.query('SELECT coalesce(max(id), 0) AS m FROM audit.change_log')).rows[0].m);
    const weird = 'x"; DROP TABLE audit.change_log; --';
    for (const schema of ['crm', 'hr', 'fin', 'wms']) {
      await c.query(`CREATE TABLE ${schema}.audited_${schema} (id int)`);
      await c.query(`INSERT INTO ${schema}.audited_${schema} VALUES (1)`);
    }
    await c.query('CREATE TABLE fin.from_query AS SELECT 1 AS id');
    await c.query('INSERT INTO fin.from_query VALUES (2)');
    await c.query(`CREATE TABLE crm.${pg.escapeIdentifier(weird)} (id int)`);
    await c.query(`INSERT INTO crm.${pg.escapeIdentifier(weird)} VALUES (1)`);
    const log = (await c.query<{t: string}>("SELECT schema_name || '.' || table_name AS t FROM audit.change_log WHERE id > $1 AND operation = 'INSERT' ORDER BY id", [since])).rows.map((r) => r.t);
    // (The rows CREATE TABLE AS writes come before any trigger can exist; the INSERT after it counts.)
    expect([...new Set(log)]).toEqual(['crm.audited_crm', 'hr.audited_hr', 'fin.audited_fin', 'wms.audited_wms', 'fin.from_query', `crm.${weird}`]);
    expect((await c.query("SELECT to_regclass('audit.change_log') IS NOT NULL AS ok")).rows[0].ok).toBe(true);
  });

  it('partitioned tables still work and each row is audited exactly once', async () => {
    const since = Number((await c.query('SELECT coalesce(max(id), 0) AS m FROM audit.change_log')).rows[0].m);
    await c.query('CREATE TABLE crm.events (id int, at date NOT NULL) PARTITION BY RANGE (at)');
    await c.query("CREATE TABLE crm.events_2026 PARTITION OF crm.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')");
    await c.query('CREATE TABLE crm.events_2027 (id int, at date NOT NULL)');
    await c.query("ALTER TABLE crm.events ATTACH PARTITION crm.events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')");
    await c.query("INSERT INTO crm.events VALUES (1, '2026-06-01'), (2, '2027-06-01')");
    const log = (await c.query<{after: {id: number}}>("SELECT after FROM audit.change_log WHERE id > $1 AND operation = 'INSERT' AND table_name LIKE 'events%' ORDER BY id", [since])).rows.map((r) => r.after.id);
    expect(log).toEqual([1, 2]);
  });
});
