import {createHash, createHmac, pbkdf2Sync, randomBytes} from 'node:crypto';

/**
 * A SCRAM-SHA-256 verifier in PostgreSQL's stored format. dforge sends roles this verifier, never
 * the password, so the password is not on the wire, in the server log (log_statement) or in
 * pg_stat_activity, even briefly.
 */
export function scramVerifier(password: string, iterations = 4096): string {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** A random password for a database role: 32 bytes, base64url (no quoting problems anywhere). */
export function randomPassword(): string {
  return randomBytes(32).toString('base64url');
}
