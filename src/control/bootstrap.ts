import type {Client} from 'pg';

import {escapeIdentifier, escapeLiteral} from '../postgres/sql.js';
import {scramVerifier} from '../postgres/scram.js';
import {migrateControlSchema} from './schema.js';

export const CONTROL_DATABASE = 'dforge_control';
export const PROVISIONER_ROLE = 'dforge_provisioner';
const CONTROL_SCHEMA = 'dforge';

export interface BootstrapResult {
  readonly provisionerCreated: boolean;
  readonly controlDatabaseCreated: boolean;
  readonly migrationsApplied: number[];
}

/**
 * Prepares a cluster for dforge, idempotently, from an administrative connection:
 *  - the provisioner role: LOGIN, CREATEDB, CREATEROLE, and nothing more (not a superuser, no
 *    replication, no RLS bypass, a member of no tenant role). pg_signal_backend lets it end a
 *    suspended tenant's sessions without superuser rights. Its password is set as a SCRAM
 *    verifier, so the password never reaches the server;
 *  - on the primary cluster, dforge_control owned by the provisioner, with CONNECT revoked from
 *    PUBLIC, and its schema migrated by the provisioner itself.
 */
export async function bootstrapCluster(
  admin: Client,
  options: {provisionerPassword: string; withControlDatabase: boolean; connectAsProvisioner: (database: string) => Promise<Client>},
): Promise<BootstrapResult> {
  const role = escapeIdentifier(PROVISIONER_ROLE);
  const exists = (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [PROVISIONER_ROLE])).rowCount === 1;
  const attributes = 'LOGIN CREATEDB CREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 32';
  const verifier = escapeLiteral(scramVerifier(options.provisionerPassword));
  await admin.query(`${exists ? 'ALTER' : 'CREATE'} ROLE ${role} WITH ${attributes} PASSWORD ${verifier}`);
  await admin.query(`GRANT pg_signal_backend TO ${role}`);

  let controlDatabaseCreated = false;
  let migrationsApplied: number[] = [];
  if (options.withControlDatabase) {
    const db = escapeIdentifier(CONTROL_DATABASE);
    if ((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [CONTROL_DATABASE])).rowCount === 0) {
      await admin.query(`CREATE DATABASE ${db} OWNER ${role} ENCODING 'UTF8' TEMPLATE template0`);
      controlDatabaseCreated = true;
    }
    await admin.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
    const provisioner = await options.connectAsProvisioner(CONTROL_DATABASE);
    try {
      // dforge's tables live in a schema the provisioner owns outright, not in public, which
      // belongs to pg_database_owner and is where extensions and careless tools write.
      await provisioner.query(`CREATE SCHEMA IF NOT EXISTS ${CONTROL_SCHEMA}`);
      await provisioner.query(`ALTER DATABASE ${db} SET search_path = ${CONTROL_SCHEMA}`);
      await provisioner.query(`SET search_path = ${CONTROL_SCHEMA}`);
      migrationsApplied = await migrateControlSchema(provisioner);
    } finally {
      await provisioner.end();
    }
  }
  return {provisionerCreated: !exists, controlDatabaseCreated, migrationsApplied};
}
