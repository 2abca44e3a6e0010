/**
 * What every tenant database holds: the module schemas and the audit trail. Run as the tenant's
 * own role inside its database, so the tenant owns its objects and dforge needs no superuser.
 * Idempotent: a rerun after a crash converges on the same objects.
 */
export const MODULE_SCHEMAS = ['crm', 'hr', 'fin', 'wms'] as const;

export const TENANT_DATABASE_SQL = `
${[...MODULE_SCHEMAS, 'audit'].map((s) => `CREATE SCHEMA IF NOT EXISTS ${s};`).join('\n')}
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

CREATE OR REPLACE FUNCTION audit.log_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO audit.change_log (schema_name, table_name, operation) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP);
  ELSE
    INSERT INTO audit.change_log (schema_name, table_name, operation, before, after)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);
  END IF;
  RETURN NULL;
END
$fn$;

-- Attaches the change log to one table (row changes and TRUNCATE). Safe to call again.
CREATE OR REPLACE FUNCTION audit.attach_change_log(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  EXECUTE format('DROP TRIGGER IF EXISTS dforge_change_log ON %s', target);
  EXECUTE format('CREATE TRIGGER dforge_change_log AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION audit.log_change()', target);
  EXECUTE format('DROP TRIGGER IF EXISTS dforge_change_log_truncate ON %s', target);
  EXECUTE format('CREATE TRIGGER dforge_change_log_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION audit.log_change()', target);
END
$fn$;

-- Attaches the change log to every table of the module schemas that lacks it; returns how many.
CREATE OR REPLACE FUNCTION audit.attach_all() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  t regclass;
  n integer := 0;
BEGIN
  FOR t IN
    SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
     WHERE s.nspname IN (${MODULE_SCHEMAS.map((s) => `'${s}'`).join(', ')}) AND c.relkind IN ('r', 'p')
       AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'dforge_change_log')
  LOOP
    PERFORM audit.attach_change_log(t);
    n := n + 1;
  END LOOP;
  RETURN n;
END
$fn$;

-- Coverage for posture: module tables in total and with the change trigger.
CREATE OR REPLACE VIEW audit.coverage AS
SELECT count(*) AS tables,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = 'dforge_change_log')) AS covered
  FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
 WHERE s.nspname IN (${MODULE_SCHEMAS.map((s) => `'${s}'`).join(', ')}) AND c.relkind IN ('r', 'p');
`;
