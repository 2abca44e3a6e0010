/**
 * The provisioner's narrow interface to tenant roles.
 *
 * The provisioner has no CREATEROLE: on PostgreSQL 15 that attribute lets a role grant itself
 * any predefined role (pg_execute_server_program reaches an OS shell), so it would make the
 * provisioner a superuser in waiting. Everything it needs to do to roles goes through SECURITY
 * DEFINER functions that the superuser installs at bootstrap, in schema `dforge_provision` of the
 * cluster's `postgres` database. Each one checks that every target is a dforge tenant role (its
 * name has dforge's shape, and it is in the registry the functions keep), pins search_path, and
 * takes passwords only as SCRAM verifiers, passed as bind parameters and never echoed in an error.
 *
 * Roles of tenant <s>: `tenant_<s>` (LOGIN, the app's), `tenant_<s>__owner` (NOLOGIN, owns the
 * database, the module schemas and the audit trail; a member of the login role so it can adopt
 * what a restore created) and, during a restore only, `tenant_<s>__restore` (LOGIN, NOINHERIT, a
 * member of the login role). Slugs never contain "__", so these names can't collide with a tenant.
 */
import type {Client} from 'pg';

import {UserError, VerificationError} from '../errors.js';
import {escapeIdentifier, escapeLiteral} from './sql.js';

export const PROVISION_SCHEMA = 'dforge_provision';
/** The template every tenant database is cloned from: it carries the change-log guard (event triggers need a superuser). */
export const TENANT_TEMPLATE_DATABASE = 'dforge_tenant_template';

export const ownerRoleOf = (login: string): string => `${login}__owner`;
export const restoreRoleOf = (login: string): string => `${login}__restore`;

/** SQLSTATEs the interface raises; mapped to user errors below. */
const NOT_A_TENANT_ROLE = 'DFG01';
const ROLE_MISSING = 'DFG02';
const UNSAFE_STATE = 'DFG03';

/**
 * Installs (or replaces) the interface. Run by the superuser in the `postgres` database at
 * bootstrap; idempotent. `provisioner` is dforge's provisioner role name.
 */
export function provisionerInterfaceSql(provisioner: string): string {
  const p = escapeIdentifier(provisioner);
  const pLit = escapeLiteral(provisioner);
  // Every function: SECURITY DEFINER, pinned search_path, and errors that never carry a verifier.
  const definer = 'LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp';
  return `
CREATE SCHEMA IF NOT EXISTS ${PROVISION_SCHEMA};
REVOKE ALL ON SCHEMA ${PROVISION_SCHEMA} FROM PUBLIC;
GRANT USAGE ON SCHEMA ${PROVISION_SCHEMA} TO ${p};

-- The registry: a login role is a dforge tenant role only if it is listed here.
CREATE TABLE IF NOT EXISTS ${PROVISION_SCHEMA}.tenant_roles (
  login         name PRIMARY KEY,
  registered_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON ${PROVISION_SCHEMA}.tenant_roles FROM PUBLIC;

-- The shape of a tenant login role: what tenantDbName() makes of a valid slug.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}._check_name(p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  IF p_login IS NULL OR p_login !~ '^tenant_[a-z][a-z0-9_]{1,39}$' OR p_login ~ '__' OR p_login ~ '_$' THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%s is not a dforge tenant role name', coalesce(quote_ident(p_login), 'NULL'));
  END IF;
END
$fn$;

-- A registered tenant login role that exists, with its owner role; the error says which is missing.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}._require(p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF NOT EXISTS (SELECT 1 FROM ${PROVISION_SCHEMA}.tenant_roles WHERE login = p_login) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a registered dforge tenant role', p_login);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_login) OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_login || '__owner') THEN
    RAISE EXCEPTION USING ERRCODE = '${ROLE_MISSING}', MESSAGE = format('the role %I (or its owner role) no longer exists on this cluster', p_login);
  END IF;
END
$fn$;

-- ALTER/CREATE ROLE ... PASSWORD: a failure is re-raised without the statement, so no verifier
-- reaches the server log through an error's CONTEXT line.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}._apply_role(p_sql text, p_role text, p_verifier text) RETURNS void ${definer} AS $fn$
BEGIN
  IF p_verifier IS NULL OR p_verifier !~ '^SCRAM-SHA-256\\$[0-9]+:[A-Za-z0-9+/=]+\\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$' THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = 'a password must be given as a SCRAM-SHA-256 verifier';
  END IF;
  BEGIN
    EXECUTE format(p_sql, p_role, p_verifier);
  EXCEPTION WHEN OTHERS THEN
    RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = format('could not set the credentials of role %I (%s)', p_role, SQLSTATE);
  END;
END
$fn$;

-- Creates (or, on a rerun, resets) a tenant's login and owner roles with safe attributes only.
-- An existing login role that dforge did not register is adopted only if it is a plain role.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.ensure_tenant_roles(p_login text, p_verifier text, p_limit integer, p_login_enabled boolean) RETURNS void ${definer} AS $fn$
DECLARE
  v_owner text := p_login || '__owner';
  v_role record;
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = 'a tenant connection limit must be between 1 and 10000';
  END IF;
  SELECT * INTO v_role FROM pg_roles WHERE rolname = p_login;
  IF FOUND AND NOT EXISTS (SELECT 1 FROM ${PROVISION_SCHEMA}.tenant_roles WHERE login = p_login) THEN
    IF v_role.rolsuper OR v_role.rolcreaterole OR v_role.rolcreatedb OR v_role.rolreplication OR v_role.rolbypassrls
       OR EXISTS (SELECT 1 FROM pg_auth_members WHERE member = v_role.oid OR roleid = v_role.oid) THEN
      RAISE EXCEPTION USING ERRCODE = '${UNSAFE_STATE}', MESSAGE = format('role %I exists and is not a plain tenant role; dforge will not adopt it', p_login);
    END IF;
  END IF;
  IF FOUND THEN
    PERFORM ${PROVISION_SCHEMA}._apply_role('ALTER ROLE %I WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT '
      || CASE WHEN p_login_enabled THEN 'LOGIN' ELSE 'NOLOGIN' END || ' CONNECTION LIMIT ' || p_limit || ' PASSWORD %L', p_login, p_verifier);
  ELSE
    PERFORM ${PROVISION_SCHEMA}._apply_role('CREATE ROLE %I WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT '
      || CASE WHEN p_login_enabled THEN 'LOGIN' ELSE 'NOLOGIN' END || ' CONNECTION LIMIT ' || p_limit || ' PASSWORD %L', p_login, p_verifier);
  END IF;
  INSERT INTO ${PROVISION_SCHEMA}.tenant_roles (login) VALUES (p_login) ON CONFLICT DO NOTHING;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_owner) THEN
    EXECUTE format('CREATE ROLE %I WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT', v_owner);
  ELSE
    EXECUTE format('ALTER ROLE %I WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT', v_owner);
  END IF;
  IF NOT pg_has_role(v_owner, p_login, 'MEMBER') THEN
    EXECUTE format('GRANT %I TO %I', p_login, v_owner);
  END IF;
  RAISE LOG 'dforge: tenant roles % and % ensured (password set, connection limit %) by %', p_login, v_owner, p_limit, session_user;
END
$fn$;

CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.set_tenant_password(p_login text, p_verifier text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  PERFORM ${PROVISION_SCHEMA}._apply_role('ALTER ROLE %I PASSWORD %L', p_login, p_verifier);
  RAISE LOG 'dforge: password of tenant role % changed by %', p_login, session_user;
END
$fn$;

CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.set_tenant_login(p_login text, p_enabled boolean) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  EXECUTE format('ALTER ROLE %I ' || CASE WHEN p_enabled THEN 'LOGIN' ELSE 'NOLOGIN' END, p_login);
  RAISE LOG 'dforge: tenant role % %', p_login, CASE WHEN p_enabled THEN 'may log in again' ELSE 'suspended (NOLOGIN)' END;
END
$fn$;

-- Ends client sessions: with p_database NULL, those of the tenant's roles and on every database
-- its owner role owns; else only those on that one database of the tenant's.
DROP FUNCTION IF EXISTS ${PROVISION_SCHEMA}.terminate_tenant_sessions(text);
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.terminate_tenant_sessions(p_login text, p_database text) RETURNS integer ${definer} AS $fn$
DECLARE
  n integer;
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  IF p_database IS NOT NULL AND NOT ${PROVISION_SCHEMA}._is_tenant_database(p_login, p_database) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a database of tenant role %I', p_database, p_login);
  END IF;
  SELECT count(pg_terminate_backend(a.pid)) INTO n
    FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
   WHERE a.pid <> pg_backend_pid() AND NOT r.rolsuper
     AND CASE WHEN p_database IS NOT NULL THEN a.datname = p_database
              ELSE a.usename IN (p_login, p_login || '__restore')
                   OR a.datname IN (SELECT datname FROM pg_database WHERE datdba IN (SELECT oid FROM pg_roles WHERE rolname IN (p_login || '__owner', p_login))) END;
  RETURN n;
END
$fn$;

-- The provisioner becomes (or stops being) a member of a tenant's owner role, for the steps that
-- set up a database it has just cloned. Never of any other role.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.join_tenant_owner(p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  IF NOT pg_has_role(${pLit}, p_login || '__owner', 'MEMBER') THEN
    EXECUTE format('GRANT %I TO %I', p_login || '__owner', ${pLit});
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.leave_tenant_owner(p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
              WHERE r.rolname = p_login || '__owner' AND m.member = (SELECT oid FROM pg_roles WHERE rolname = ${pLit})) THEN
    EXECUTE format('REVOKE %I FROM %I', p_login || '__owner', ${pLit});
  END IF;
END
$fn$;

-- The tenant's databases by name: the live one, the restore scratch and the kept pre-restore copies.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}._is_tenant_database(p_login text, p_db text) RETURNS boolean ${definer} AS $fn$
BEGIN
  RETURN p_db = p_login OR p_db = p_login || '__restore' OR p_db ~ ('^' || p_login || '__(pre_restore|pr)_[0-9a-z]+$');
END
$fn$;

-- A database the provisioner just created (and still owns) passes to the tenant's owner role.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.hand_over_database(p_db text, p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  IF NOT (p_db = p_login OR p_db = p_login || '__restore')
     OR NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_db AND datdba = (SELECT oid FROM pg_roles WHERE rolname = ${pLit})) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a database the provisioner created for %I', p_db, p_login);
  END IF;
  EXECUTE format('ALTER DATABASE %I OWNER TO %I', p_db, p_login || '__owner');
END
$fn$;

-- A tenant's database passes back to the provisioner, which then drops it (DROP DATABASE can't
-- run inside a function).
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.take_back_database(p_db text, p_login text) RETURNS void ${definer} AS $fn$
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF NOT EXISTS (SELECT 1 FROM ${PROVISION_SCHEMA}.tenant_roles WHERE login = p_login) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a registered dforge tenant role', p_login);
  END IF;
  IF NOT ${PROVISION_SCHEMA}._is_tenant_database(p_login, p_db)
     OR NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_db AND datdba IN (SELECT oid FROM pg_roles WHERE rolname IN (p_login || '__owner', p_login, ${pLit}))) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a database of tenant role %I', p_db, p_login);
  END IF;
  EXECUTE format('ALTER DATABASE %I OWNER TO %I', p_db, ${pLit});
  RAISE LOG 'dforge: database % of % handed back to % for removal', p_db, p_login, ${pLit};
END
$fn$;

-- Restore's swap: live -> previous and scratch -> live, both renames in this one transaction.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.swap_databases(p_login text, p_previous text) RETURNS boolean ${definer} AS $fn$
DECLARE
  v_owner oid;
  v_has_live boolean;
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  SELECT oid INTO v_owner FROM pg_roles WHERE rolname = p_login || '__owner';
  IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_login || '__restore' AND datdba = v_owner)
     OR p_previous !~ ('^' || p_login || '__(pre_restore|pr)_[0-9a-z]+$')
     OR EXISTS (SELECT 1 FROM pg_database WHERE datname = p_previous) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('no restore of %I to swap in as %I', p_login, p_previous);
  END IF;
  v_has_live := EXISTS (SELECT 1 FROM pg_database WHERE datname = p_login);
  IF v_has_live THEN
    IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_login AND datdba IN (v_owner, (SELECT oid FROM pg_roles WHERE rolname = p_login))) THEN
      RAISE EXCEPTION USING ERRCODE = '${UNSAFE_STATE}', MESSAGE = format('database %I is not owned by tenant %I', p_login, p_login);
    END IF;
    EXECUTE format('ALTER DATABASE %I RENAME TO %I', p_login, p_previous);
  END IF;
  EXECUTE format('ALTER DATABASE %I RENAME TO %I', p_login || '__restore', p_login);
  RAISE LOG 'dforge: restored database swapped in for % (previous kept as %)', p_login, CASE WHEN v_has_live THEN p_previous ELSE 'none' END;
  RETURN v_has_live;
END
$fn$;

-- Undoing a restore: live -> p_previous and the kept p_source -> live, both renames in this one
-- transaction. p_source is a copy a restore (or an earlier undo) set aside; p_previous is new.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.swap_back_database(p_login text, p_source text, p_previous text) RETURNS void ${definer} AS $fn$
DECLARE
  v_owners oid[];
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  v_owners := ARRAY(SELECT oid FROM pg_roles WHERE rolname IN (p_login || '__owner', p_login));
  IF p_source !~ ('^' || p_login || '__(pre_restore|pr)_[0-9a-z]+$')
     OR p_previous !~ ('^' || p_login || '__(pre_restore|pr)_[0-9a-z]+$')
     OR NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_source AND datdba = ANY (v_owners))
     OR EXISTS (SELECT 1 FROM pg_database WHERE datname = p_previous) THEN
    RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('no kept database %I of %I to swap back in (setting the live one aside as %I)', p_source, p_login, p_previous);
  END IF;
  IF EXISTS (SELECT 1 FROM pg_database WHERE datname = p_login) THEN
    IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = p_login AND datdba = ANY (v_owners)) THEN
      RAISE EXCEPTION USING ERRCODE = '${UNSAFE_STATE}', MESSAGE = format('database %I is not owned by tenant %I', p_login, p_login);
    END IF;
    EXECUTE format('ALTER DATABASE %I RENAME TO %I', p_login, p_previous);
  END IF;
  EXECUTE format('ALTER DATABASE %I RENAME TO %I', p_source, p_login);
  RAISE LOG 'dforge: kept database % swapped back in for % (the replaced one kept as %)', p_source, p_login, p_previous;
END
$fn$;

-- The short-lived role a restore's pg_restore logs in as: named like the scratch database (so
-- pg_hba's sameuser admits it there only), NOINHERIT, a member of the tenant's login role and of
-- nothing else, so code the dump carries runs with no more power than the tenant's own.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.create_restore_role(p_login text, p_verifier text) RETURNS void ${definer} AS $fn$
DECLARE
  v_restore text := p_login || '__restore';
BEGIN
  PERFORM ${PROVISION_SCHEMA}._require(p_login);
  PERFORM ${PROVISION_SCHEMA}.drop_restore_role(p_login);
  PERFORM ${PROVISION_SCHEMA}._apply_role('CREATE ROLE %I WITH LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 4 VALID UNTIL '
    || quote_literal((now() + interval '1 day')::text) || ' PASSWORD %L', v_restore, p_verifier);
  EXECUTE format('GRANT %I TO %I', p_login, v_restore);
  RAISE LOG 'dforge: restore role % created for %', v_restore, p_login;
END
$fn$;

CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.drop_restore_role(p_login text) RETURNS void ${definer} AS $fn$
DECLARE
  v_restore text := p_login || '__restore';
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_restore) THEN
    RETURN;
  END IF;
  BEGIN
    EXECUTE format('DROP ROLE %I', v_restore);
  EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE EXCEPTION USING ERRCODE = '${UNSAFE_STATE}', MESSAGE = format('the restore role %I owns or holds something (%s)', v_restore, SQLERRM);
  END;
END
$fn$;

-- Drops a tenant's roles once its databases are gone.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.drop_tenant_roles(p_login text) RETURNS void ${definer} AS $fn$
DECLARE
  v_role text;
BEGIN
  PERFORM ${PROVISION_SCHEMA}._check_name(p_login);
  IF NOT EXISTS (SELECT 1 FROM ${PROVISION_SCHEMA}.tenant_roles WHERE login = p_login) THEN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_login) THEN
      RAISE EXCEPTION USING ERRCODE = '${NOT_A_TENANT_ROLE}', MESSAGE = format('%I is not a registered dforge tenant role', p_login);
    END IF;
    RETURN;
  END IF;
  FOREACH v_role IN ARRAY ARRAY[p_login || '__restore', p_login, p_login || '__owner'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
      BEGIN
        EXECUTE format('DROP ROLE %I', v_role);
      EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE EXCEPTION USING ERRCODE = '${UNSAFE_STATE}', MESSAGE = format('role %I still owns or holds something (%s)', v_role, SQLERRM);
      END;
    END IF;
  END LOOP;
  DELETE FROM ${PROVISION_SCHEMA}.tenant_roles WHERE login = p_login;
  RAISE LOG 'dforge: tenant roles of % dropped by %', p_login, session_user;
END
$fn$;

-- The rules of the cluster's pg_hba.conf as the server parses it, for posture's drift check:
-- pg_hba_file_rules is superuser-only, and posture never uses the superuser. Read-only. It is
-- superuser-only because options can carry secrets (ldapbindpasswd, radiussecrets): their values
-- are replaced here, so the provisioner learns that such an option is set, never its value.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.hba_rules()
RETURNS TABLE (line_number integer, type text, database text[], user_name text[], address text, netmask text, auth_method text, options text[], error text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT h.line_number, h.type, h.database, h.user_name, h.address, h.netmask, h.auth_method,
         ARRAY(SELECT CASE WHEN o OPERATOR(pg_catalog.~*) '^[a-z_]*(passw|secret)' THEN pg_catalog.split_part(o, '=', 1) OPERATOR(pg_catalog.||) '=<redacted>' ELSE o END
                 FROM pg_catalog.unnest(h.options) AS o),
         h.error
    FROM pg_catalog.pg_hba_file_rules h ORDER BY h.line_number
$fn$;

-- pg_hba_file_rules shows the file on disk, not the rules the server loaded: an edit made after
-- the last reload (or a trust line reloaded and then removed from the file) would be invisible.
-- This says when the file last changed and when the server last loaded its configuration.
-- pg_stat_file has whole seconds; the path lets a caller on the same host stat the file finer.
CREATE OR REPLACE FUNCTION ${PROVISION_SCHEMA}.hba_file_state()
RETURNS TABLE (path text, modified timestamptz, loaded timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT pg_catalog.current_setting('hba_file'), (pg_catalog.pg_stat_file(pg_catalog.current_setting('hba_file'))).modification, pg_catalog.pg_conf_load_time()
$fn$;

-- Functions are executable by PUBLIC by default: only the provisioner may call the interface,
-- and nobody the internal helpers.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ${PROVISION_SCHEMA} FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ${PROVISION_SCHEMA}.ensure_tenant_roles(text, text, integer, boolean),
  ${PROVISION_SCHEMA}.set_tenant_password(text, text),
  ${PROVISION_SCHEMA}.set_tenant_login(text, boolean),
  ${PROVISION_SCHEMA}.terminate_tenant_sessions(text, text),
  ${PROVISION_SCHEMA}.join_tenant_owner(text),
  ${PROVISION_SCHEMA}.leave_tenant_owner(text),
  ${PROVISION_SCHEMA}.hand_over_database(text, text),
  ${PROVISION_SCHEMA}.take_back_database(text, text),
  ${PROVISION_SCHEMA}.swap_databases(text, text),
  ${PROVISION_SCHEMA}.swap_back_database(text, text, text),
  ${PROVISION_SCHEMA}.create_restore_role(text, text),
  ${PROVISION_SCHEMA}.drop_restore_role(text),
  ${PROVISION_SCHEMA}.drop_tenant_roles(text),
  ${PROVISION_SCHEMA}.hba_rules(),
  ${PROVISION_SCHEMA}.hba_file_state()
TO ${p};
`;
}

/**
 * The provisioner's calls into the interface, on a session to the cluster's `postgres` database.
 * Interface errors become user errors that say what to do.
 */
export class TenantRoles {
  constructor(private readonly c: Client) {}

  ensure(login: string, verifier: string, connectionLimit: number, loginEnabled = true): Promise<void> {
    return this.call('ensure_tenant_roles($1, $2, $3, $4)', [login, verifier, connectionLimit, loginEnabled]);
  }

  setPassword(login: string, verifier: string): Promise<void> {
    return this.call('set_tenant_password($1, $2)', [login, verifier]);
  }

  setLogin(login: string, enabled: boolean): Promise<void> {
    return this.call('set_tenant_login($1, $2)', [login, enabled]);
  }

  /** Ends the sessions of the tenant's roles and on its databases, or only on `database`. */
  async terminateSessions(login: string, database?: string): Promise<number> {
    const r = await this.query<{n: number}>('terminate_tenant_sessions($1, $2) AS n', [login, database ?? null]);
    return r[0]?.n ?? 0;
  }

  /** Runs `fn` with the provisioner a member of the tenant's owner role, and never leaves it one. */
  async asOwner<T>(login: string, fn: () => Promise<T>): Promise<T> {
    await this.call('join_tenant_owner($1)', [login]);
    try {
      return await fn();
    } finally {
      await this.call('leave_tenant_owner($1)', [login]);
    }
  }

  handOver(database: string, login: string): Promise<void> {
    return this.call('hand_over_database($1, $2)', [database, login]);
  }

  takeBack(database: string, login: string): Promise<void> {
    return this.call('take_back_database($1, $2)', [database, login]);
  }

  async swap(login: string, previous: string): Promise<boolean> {
    const r = await this.query<{swapped: boolean}>('swap_databases($1, $2) AS swapped', [login, previous]);
    return r[0]?.swapped ?? false;
  }

  /** Undo of a restore: the kept `source` becomes the live database, the live one is kept as `previous`. */
  swapBack(login: string, source: string, previous: string): Promise<void> {
    return this.call('swap_back_database($1, $2, $3)', [login, source, previous]);
  }

  createRestoreRole(login: string, verifier: string): Promise<void> {
    return this.call('create_restore_role($1, $2)', [login, verifier]);
  }

  dropRestoreRole(login: string): Promise<void> {
    return this.call('drop_restore_role($1)', [login]);
  }

  dropRoles(login: string): Promise<void> {
    return this.call('drop_tenant_roles($1)', [login]);
  }

  private async call(fn: string, params: unknown[]): Promise<void> {
    await this.query(fn, params);
  }

  private async query<T extends object>(fn: string, params: unknown[]): Promise<T[]> {
    try {
      return (await this.c.query<T>(`SELECT ${PROVISION_SCHEMA}.${fn}`, params)).rows;
    } catch (err) {
      throw interfaceError(err);
    }
  }
}

function interfaceError(err: unknown): unknown {
  const e = err as {code?: string; message?: string};
  switch (e.code) {
    case ROLE_MISSING:
      return new UserError(`${e.message}: it was removed outside dforge`, {
        nextSteps: ['Recreate it from the sealed credentials with: dforge restore --tenant <slug> --from <backup> (restores recreate missing roles), or remove the tenant with: dforge tenant delete <slug> --confirm <slug>'],
        cause: err,
      });
    case NOT_A_TENANT_ROLE:
      return new UserError(`refused by the provisioning interface: ${e.message}`, {nextSteps: ['Only dforge tenant roles can be changed through dforge; check the slug with: dforge tenant list'], cause: err});
    case UNSAFE_STATE:
      return new VerificationError(`refused by the provisioning interface: ${e.message}`, {
        nextSteps: ['Something changed tenant roles outside dforge. Inspect the roles named here as the superuser before retrying.'],
        cause: err,
      });
    case '42883':
    case '3F000':
      return new UserError('this cluster has no dforge provisioning interface (it was bootstrapped by an older dforge)', {
        nextSteps: ['Bootstrap it again as the superuser: re-run dforge install (compose) or dforge quickstart / db init (embedded).'],
        cause: err,
      });
    default:
      return err;
  }
}
