import type {Client} from 'pg';

import {escapeIdentifier} from '../postgres/sql.js';
import {provisionerInterfaceSql, TENANT_TEMPLATE_DATABASE} from '../postgres/provisioner.js';
import {applyRoleWithVerifier} from '../postgres/role-password.js';
import {scramVerifier} from '../postgres/scram.js';
import {tenantTemplateSql} from '../tenants/module-sql.js';
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
 * Prepares a cluster for dforge, idempotently, as the superuser (bootstrap and upgrades are the
 * only things the superuser credential is used for):
 *  - the provisioner role: LOGIN and CREATEDB, nothing more. No CREATEROLE: on PostgreSQL 15 it
 *    lets a role grant itself any predefined role, pg_execute_server_program included. No
 *    membership in any role, predefined ones included; a rerun revokes whatever an older dforge
 *    or a hand granted. Its password is set as a SCRAM verifier, inside a function whose errors
 *    never carry it;
 *  - the provisioning interface (postgres/provisioner.ts) in the `postgres` database;
 *  - the tenant template database with the change-log guard (event triggers need a superuser);
 *  - on the primary cluster, dforge_control owned by the provisioner, with CONNECT revoked from
 *    PUBLIC, and its schema migrated by the provisioner itself.
 * `connectAsAdmin` opens another superuser session on the same cluster (for the template).
 */
export async function bootstrapCluster(
  admin: Client,
  options: {
    provisionerPassword: string;
    withControlDatabase: boolean;
    connectAsProvisioner: (database: string) => Promise<Client>;
    connectAsAdmin: (database: string) => Promise<Client>;
  },
): Promise<BootstrapResult> {
  const role = escapeIdentifier(PROVISIONER_ROLE);
  const exists = (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [PROVISIONER_ROLE])).rowCount === 1;
  if (!exists) await admin.query(`CREATE ROLE ${role}`);
  await admin.query(`ALTER ROLE ${role} WITH LOGIN CREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 32`);
  const memberships = await admin.query<{role: string}>(
    'SELECT r.rolname AS role FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)',
    [PROVISIONER_ROLE],
  );
  for (const m of memberships.rows) await admin.query(`REVOKE ${escapeIdentifier(m.role)} FROM ${role}`);
  await admin.query(provisionerInterfaceSql(PROVISIONER_ROLE));
  await applyRoleWithVerifier(admin, 'ALTER ROLE %I PASSWORD %L', PROVISIONER_ROLE, scramVerifier(options.provisionerPassword));
  // CIS 4.10: nobody creates objects in a public schema dforge does not use.
  await admin.query('REVOKE ALL ON SCHEMA public FROM PUBLIC');
  await ensureTenantTemplate(admin, options.connectAsAdmin);
  const template1 = await options.connectAsAdmin('template1');
  try {
    await template1.query('REVOKE ALL ON SCHEMA public FROM PUBLIC');
  } finally {
    await template1.end();
  }

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
      await provisioner.query('REVOKE ALL ON SCHEMA public FROM PUBLIC');
      await provisioner.query(`ALTER DATABASE ${db} SET search_path = ${CONTROL_SCHEMA}`);
      await provisioner.query(`SET search_path = ${CONTROL_SCHEMA}`);
      migrationsApplied = await migrateControlSchema(provisioner);
    } finally {
      await provisioner.end();
    }
  }
  return {provisionerCreated: !exists, controlDatabaseCreated, migrationsApplied};
}

/**
 * The template tenant databases are cloned from. It is a template (any CREATEDB role may clone
 * it) that nobody may connect to, except this bootstrap while it refreshes the guard.
 */
async function ensureTenantTemplate(admin: Client, connectAsAdmin: (database: string) => Promise<Client>): Promise<void> {
  const db = escapeIdentifier(TENANT_TEMPLATE_DATABASE);
  if ((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [TENANT_TEMPLATE_DATABASE])).rowCount === 0) {
    await admin.query(`CREATE DATABASE ${db} TEMPLATE template0 ENCODING 'UTF8'`);
  }
  await admin.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
  await admin.query(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS true`);
  const template = await connectAsAdmin(TENANT_TEMPLATE_DATABASE);
  try {
    await template.query(tenantTemplateSql(PROVISIONER_ROLE));
  } finally {
    await template.end();
  }
  await admin.query(`ALTER DATABASE ${db} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`);
}
