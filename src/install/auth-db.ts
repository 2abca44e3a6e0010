import type {Client} from 'pg';

import {applyRoleWithVerifier} from '../postgres/role-password.js';
import {scramVerifier} from '../postgres/scram.js';
import {escapeIdentifier} from '../postgres/sql.js';
import {AUTH_DB_ROLE} from '../render/values.js';

/**
 * The identity store of the auth service, on its own PostgreSQL (auth-db): one login role and
 * the database of the same name (pg_hba sameuser), closed to PUBLIC. Idempotent; the role's
 * password is set to the sealed one on every run, as a SCRAM verifier that no statement text
 * carries (see applyRoleWithVerifier).
 */
export async function ensureAuthDatabase(admin: Client, password: string): Promise<{created: boolean}> {
  const role = escapeIdentifier(AUTH_DB_ROLE);
  const roleExists = (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [AUTH_DB_ROLE])).rowCount === 1;
  await applyRoleWithVerifier(admin, `${roleExists ? 'ALTER' : 'CREATE'} ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD %L`, AUTH_DB_ROLE, scramVerifier(password));
  const dbExists = (await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [AUTH_DB_ROLE])).rowCount === 1;
  if (!dbExists) await admin.query(`CREATE DATABASE ${role} OWNER ${role} TEMPLATE template0 ENCODING 'UTF8'`);
  await admin.query(`REVOKE ALL ON DATABASE ${role} FROM PUBLIC`);
  await admin.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${role} TO ${role}`);
  return {created: !dbExists};
}
