/**
 * What every tenant database holds, and who owns it.
 *
 * The tenant's NOLOGIN owner role (`tenant_<s>__owner`) owns the database, the module schemas and
 * the audit trail. The app's login role gets what an app needs: USAGE and CREATE in the module
 * schemas (it owns the tables it creates, for its own migrations), and INSERT into the change log
 * through the trigger. It can't delete, update or truncate audit rows, replace the trigger
 * function, widen the database's ACL or lift its connection limit: none of those are its objects.
 *
 * The change-log trigger function runs as the session's own role (SECURITY INVOKER): to_jsonb()
 * calls casts the tenant may define on its own types, and as a definer function that would be
 * tenant code running with the owner role's power. docs/app-contract.md is what the app may rely on.
 */
import {escapeIdentifier} from '../postgres/sql.js';

export const MODULE_SCHEMAS = ['crm', 'hr', 'fin', 'wms'] as const;

const moduleSchemaList = MODULE_SCHEMAS.map((s) => `'${s}'`).join(', ');

/**
 * The change-log guard, installed by the superuser in the tenant template (event triggers need a
 * superuser), so every tenant database is born with it:
 *  - at the end of any DDL, a module table without the change-log triggers gets them, so a new
 *    table is audited from its first row without anyone calling attach_all(). Tables that hold
 *    rows get them, partitions included, and partitioned parents don't: a parent's row trigger
 *    would be cloned onto its partitions and collide with theirs on ATTACH PARTITION;
 *  - a change-log trigger that was disabled, replaced, narrowed (WHEN, UPDATE OF) or dropped makes
 *    that DDL fail.
 * It runs as whoever ran the DDL. The provisioner's sessions, which set a database up and attach
 * every trigger themselves, are skipped; a restore's load is still guarded, but attaches nothing.
 */
export function tenantTemplateSql(provisioner: string): string {
  const skip = `IF session_user::text = '${provisioner}' THEN RETURN; END IF;`;
  return `
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS dforge_guard;
REVOKE ALL ON SCHEMA dforge_guard FROM PUBLIC;

CREATE OR REPLACE FUNCTION dforge_guard.keep_change_log() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  v_log regprocedure := to_regprocedure('audit.log_change()');
  v_bad text;
  t record;
BEGIN
  ${skip}
  IF v_log IS NULL THEN RETURN; END IF;
  SELECT format('%s on %s', g.tgname, g.tgrelid::regclass) INTO v_bad
    FROM pg_trigger g
   WHERE (g.tgfoid = v_log OR g.tgname IN ('dforge_change_log', 'dforge_change_log_truncate'))
     AND NOT (g.tgfoid = v_log AND g.tgenabled IN ('O', 'A') AND g.tgqual IS NULL AND g.tgnargs = 0 AND g.tgattr::text = ''
              AND ((g.tgname = 'dforge_change_log' AND g.tgtype = 29) OR (g.tgname = 'dforge_change_log_truncate' AND g.tgtype = 32)))
   LIMIT 1;
  IF v_bad IS NOT NULL THEN
    RAISE EXCEPTION 'the change-log trigger % must stay as dforge made it', v_bad
      USING ERRCODE = 'insufficient_privilege', HINT = 'Row changes in the module schemas are always audited; leave dforge_change_log and dforge_change_log_truncate alone.';
  END IF;
  -- A restore's load brings its tables' triggers with the dump (after the rows, so loading writes
  -- no change-log rows); the owner attaches any that are missing once it is done.
  IF session_user::text ~ '__restore$' THEN RETURN; END IF;
  -- CREATE TRIGGER is DDL too, so this runs again, nested, after each one: check just before.
  FOR t IN
    SELECT c.oid::regclass AS rel
      FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
     WHERE s.nspname IN (${moduleSchemaList}) AND c.relkind = 'r'
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.rel AND g.tgname = 'dforge_change_log') THEN
      EXECUTE format('CREATE TRIGGER dforge_change_log AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION audit.log_change()', t.rel);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.rel AND g.tgname = 'dforge_change_log_truncate') THEN
      EXECUTE format('CREATE TRIGGER dforge_change_log_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION audit.log_change()', t.rel);
    END IF;
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION dforge_guard.keep_change_log_on_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  d record;
BEGIN
  ${skip}
  -- A dropped table takes its triggers along (original = false); only a DROP TRIGGER aimed at
  -- the change log itself is refused.
  FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'trigger' AND original LOOP
    IF d.object_identity LIKE 'dforge\\_change\\_log on %' OR d.object_identity LIKE 'dforge\\_change\\_log\\_truncate on %' THEN
      RAISE EXCEPTION 'the change-log trigger % can not be dropped', d.object_identity
        USING ERRCODE = 'insufficient_privilege', HINT = 'Row changes in the module schemas are always audited.';
    END IF;
  END LOOP;
END
$fn$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dforge_guard FROM PUBLIC;

DROP EVENT TRIGGER IF EXISTS dforge_keep_change_log;
CREATE EVENT TRIGGER dforge_keep_change_log ON ddl_command_end EXECUTE FUNCTION dforge_guard.keep_change_log();
DROP EVENT TRIGGER IF EXISTS dforge_keep_change_log_on_drop;
CREATE EVENT TRIGGER dforge_keep_change_log_on_drop ON sql_drop EXECUTE FUNCTION dforge_guard.keep_change_log_on_drop();
`;
}

/**
 * Brings a tenant database to dforge's shape, run as the tenant's owner role (SET ROLE) with
 * search_path pinned to pg_catalog. Used on a freshly cloned database and after a restore, where
 * the dump was loaded as the login role: everything in the module and audit schemas' top level
 * is adopted by the owner role, the trigger function is replaced by dforge's own, and every
 * module table gets its change-log triggers back, enabled. Idempotent.
 *
 * None of it evaluates tenant code: it changes owners and grants, and creates triggers, which
 * run nothing at creation.
 */
export function tenantDatabaseSql(loginRole: string): string {
  const login = escapeIdentifier(loginRole);
  const schemas = MODULE_SCHEMAS.map(
    (s) => `CREATE SCHEMA IF NOT EXISTS ${s};
ALTER SCHEMA ${s} OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA ${s} FROM PUBLIC, ${login};
GRANT USAGE, CREATE ON SCHEMA ${s} TO ${login};`,
  );
  return `
${schemas.join('\n')}
CREATE SCHEMA IF NOT EXISTS audit;
ALTER SCHEMA audit OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA audit FROM PUBLIC, ${login};
GRANT USAGE ON SCHEMA audit TO ${login};
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE TABLE IF NOT EXISTS audit.change_log (
  id          bigserial PRIMARY KEY,
  at          timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- The application sets dforge.actor per transaction (SET LOCAL) to the end user; the database
  -- role is recorded as well, so a change made outside the application is still attributed.
  actor       text NOT NULL DEFAULT coalesce(nullif(current_setting('dforge.actor', true), ''), current_user),
  db_role     text NOT NULL DEFAULT current_user,
  txid        bigint NOT NULL DEFAULT txid_current(),
  schema_name text NOT NULL,
  table_name  text NOT NULL,
  operation   text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
  before      jsonb,
  after       jsonb
);
CREATE INDEX IF NOT EXISTS change_log_table_at ON audit.change_log (schema_name, table_name, at);

-- Adopt what a restore created as the login role: tables (with their sequences), views, functions.
DO $adopt$
DECLARE
  o record;
BEGIN
  FOR o IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
            WHERE c.relnamespace = 'audit'::regnamespace AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
              AND (c.relkind IN ('r', 'p', 'v', 'm') OR (c.relkind = 'S' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))))
            ORDER BY c.relkind DESC
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO CURRENT_USER',
      CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, o.rel);
  END LOOP;
  FOR o IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
            WHERE p.pronamespace = 'audit'::regnamespace AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO CURRENT_USER', o.fn);
  END LOOP;
END
$adopt$;

CREATE OR REPLACE FUNCTION audit.log_change() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO audit.change_log (schema_name, table_name, operation) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP);
  ELSE
    INSERT INTO audit.change_log (schema_name, table_name, operation, before, after)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);
  END IF;
  -- Wakes LISTEN dforge_change_log (dforge audit tail --follow) at commit. The payload, the
  -- transaction's txid (change_log.txid), is the same for all its rows, and PostgreSQL folds a
  -- transaction's identical notifications into one: a bulk load queues one, not one per row.
  -- Anyone may NOTIFY this channel, so listeners read the table, never trust the payload.
  PERFORM pg_notify('dforge_change_log', txid_current()::text);
  RETURN NULL;
END
$fn$;

-- Older databases attached triggers with this; the guard does it now.
DROP FUNCTION IF EXISTS audit.attach_change_log(regclass);

-- Attaches the change log to every module table that lacks it; returns how many. The guard
-- already does this at the end of each DDL, so for the app this is a check that returns 0.
CREATE OR REPLACE FUNCTION audit.attach_all() RETURNS integer
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  t record;
  n integer := 0;
BEGIN
  FOR t IN
    SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
     WHERE s.nspname IN (${moduleSchemaList}) AND c.relkind = 'r'
       AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'dforge_change_log')
  LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER dforge_change_log AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION audit.log_change()', t.rel);
    EXECUTE format('CREATE OR REPLACE TRIGGER dforge_change_log_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION audit.log_change()', t.rel);
    n := n + 1;
  END LOOP;
  RETURN n;
END
$fn$;

-- Coverage for posture: module tables in total and with the change trigger.
CREATE OR REPLACE VIEW audit.coverage AS
SELECT count(*) AS tables,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'dforge_change_log' AND g.tgenabled IN ('O', 'A'))) AS covered
  FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
 WHERE s.nspname IN (${moduleSchemaList}) AND c.relkind = 'r';

-- Every module table gets dforge's change-log triggers, enabled, whatever the dump carried.
DO $attach$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE s.nspname IN (${moduleSchemaList}) AND c.relkind = 'r'
              -- A trigger cloned from a partitioned parent (older databases) can't be replaced; it is kept.
              AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'dforge_change_log' AND g.tgparentid <> 0)
  LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER dforge_change_log AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION audit.log_change()', t.rel);
    EXECUTE format('ALTER TABLE %s ENABLE TRIGGER dforge_change_log', t.rel);
    EXECUTE format('CREATE OR REPLACE TRIGGER dforge_change_log_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION audit.log_change()', t.rel);
    EXECUTE format('ALTER TABLE %s ENABLE TRIGGER dforge_change_log_truncate', t.rel);
  END LOOP;
END
$attach$;

-- After a restore: the change log's rows came from the dump, its sequence position did not.
SELECT setval('audit.change_log_id_seq', coalesce((SELECT max(id) FROM audit.change_log), 1), (SELECT max(id) FROM audit.change_log) IS NOT NULL);

REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM PUBLIC, ${login};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audit FROM PUBLIC, ${login};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA audit FROM PUBLIC, ${login};
GRANT SELECT, INSERT ON audit.change_log TO ${login};
GRANT SELECT, USAGE ON SEQUENCE audit.change_log_id_seq TO ${login};
GRANT SELECT ON audit.coverage TO ${login};
GRANT EXECUTE ON FUNCTION audit.log_change(), audit.attach_all() TO ${login};
`;
}
