import type {Client} from 'pg';

import {escapeLiteral} from './sql.js';

/**
 * Runs `CREATE ROLE` or `ALTER ROLE` with a password, from a superuser session on a cluster
 * (bootstrap, the auth database), without the verifier in any statement text: it travels as a bind
 * parameter into a transaction-local setting, and the statement that uses it runs inside a DO block
 * that re-raises a failure without its text. So neither log_statement, log_min_error_statement nor
 * an error's CONTEXT line can write it to the server log. `statement` has `%I` for the role and
 * `%L` for the verifier. Tenant roles go through the provisioning interface instead (provisioner.ts).
 */
export async function applyRoleWithVerifier(admin: Client, statement: string, role: string, verifier: string): Promise<void> {
  await admin.query('BEGIN');
  try {
    await admin.query("SELECT set_config('dforge.role_verifier', $1, true)", [verifier]);
    await admin.query(`DO $do$
BEGIN
  EXECUTE format(${escapeLiteral(statement)}, ${escapeLiteral(role)}, current_setting('dforge.role_verifier'));
EXCEPTION WHEN OTHERS THEN
  RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = format('could not set the credentials of role %I (%s)', ${escapeLiteral(role)}, SQLSTATE);
END
$do$`);
    await admin.query('COMMIT');
  } catch (err) {
    await admin.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
