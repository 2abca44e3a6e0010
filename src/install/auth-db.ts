import type {Client} from 'pg';

import {scramVerifier} from '../postgres/scram.js';
import {escapeIdentifier, escapeLiteral} from '../postgres/sql.js';
import {AUTH_DB_ROLE} from '../render/values.js';

/**
 * The identity store of the auth service, on its own PostgreSQL (auth-db): one login role and
 * the database of the same name (pg_hba sameuser), closed to PUBLIC. Idempotent; the role's
 * password is set to the sealed one on every run, as a SCRAM verifier, so it never crosses the
 * wire in clear.
 */
export async function ensureAuthDatabase(admin: Client, password: string): Promise<{created: boolean}> {
  const role = escapeIdentifier(AUTH_DB_ROLE);
  const verifier = escapeLiteral(scramVerifier(password));
  const roleExists = (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [AUTH_DB_ROLE])).rowCount === 1;
  await admin.query(`${roleExists ? 'ALTER' : 'CREATE'} ROLE ${role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD ${verifier}`);
  const dbExists = (await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [AUTH_DB_ROLE])).rowCount === 1;
  if (!dbExists) await admin.query(`CREATE DATABASE ${role} OWNER ${role} TEMPLATE template0 ENCODING 'UTF8'`);
  await admin.query(`REVOKE ALL ON DATABASE ${role} FROM PUBLIC`);
  await admin.query(`GRANT CONNECT, TEMPORARY ON DATABASE ${role} TO ${role}`);
  return {created: !dbExists};
}
