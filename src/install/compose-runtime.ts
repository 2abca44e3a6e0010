import {promises as fs} from 'node:fs';
import path from 'node:path';

import {loadCertificateWithKey} from '../certs/store.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile} from '../certs/pki-paths.js';
import {provisionerSecret, superuserSecret} from '../control/clusters.js';
import type {KeyServices} from '../keys/context.js';
import {jwksFile, jwtPrivateKeyName, readJwtKeys} from '../keys/jwt.js';
import {ensureSealedPassword} from '../keys/sealed-password.js';
import {APP_UID, bundledCluster, POSTGRES_UID, PROXY_UID} from '../render/values.js';
import type {StackService} from '../runtime/compose-stack.js';
import {ensureRuntimeDir, ROOT, writeRuntimeFile, type Ownership} from '../runtime/runtime-files.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {AUTH_DB_PASSWORD_SECRET, AUTH_DB_SUPERUSER_SECRET} from './secrets.js';

const POSTGRES: Ownership = {uid: POSTGRES_UID, gid: POSTGRES_UID};
const APP: Ownership = {uid: APP_UID, gid: APP_UID};
const PROXY: Ownership = {uid: PROXY_UID, gid: PROXY_UID};

/**
 * Services whose mounted files changed and that have not been restarted since: kept on disk, so a
 * run that fails between writing the files and restarting still restarts them on the next run.
 */
const pendingRestartsFile = (dir: InstallDir): string => path.join(dir.root, 'state', 'compose-pending-restarts.json');

export async function addPendingRestarts(dir: InstallDir, services: Iterable<string>): Promise<Set<string>> {
  const all = new Set([...(await pendingRestarts(dir)), ...services]);
  await fs.mkdir(path.dirname(pendingRestartsFile(dir)), {recursive: true, mode: 0o755});
  await writeFileAtomic(pendingRestartsFile(dir), `${JSON.stringify([...all].sort())}\n`);
  return all;
}

export async function pendingRestarts(dir: InstallDir): Promise<string[]> {
  return fs.readFile(pendingRestartsFile(dir), 'utf8').then((t) => JSON.parse(t) as string[], () => []);
}

export async function clearPendingRestarts(dir: InstallDir): Promise<void> {
  await fs.rm(pendingRestartsFile(dir), {force: true});
}

/** Where the stack's database sockets appear on the host: dforge administers through them. */
export const postgresSocketDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'postgres', 'socket');
export const authDbSocketDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'auth-db', 'socket');

export interface StackCredentials {
  readonly superuser: string;
  readonly provisioner: string;
  readonly authDbSuperuser: string;
  readonly authDb: string;
  /** Names of the sealed secrets created by this run (a re-run creates none). */
  readonly created: string[];
}

/** The stack's credentials, sealed; each is generated once, on the first install, and never again. */
export async function ensureStackCredentials(keys: KeyServices, config: DforgeConfig): Promise<StackCredentials> {
  const cluster = bundledCluster(config).name;
  const names = {superuser: superuserSecret(cluster), provisioner: provisionerSecret(cluster), authDbSuperuser: AUTH_DB_SUPERUSER_SECRET, authDb: AUTH_DB_PASSWORD_SECRET};
  const created: string[] = [];
  const values: Record<string, string> = {};
  for (const [key, name] of Object.entries(names)) {
    const r = await ensureSealedPassword(keys, name);
    values[key] = r.value;
    if (r.created) created.push(name);
  }
  return {superuser: values.superuser!, provisioner: values.provisioner!, authDbSuperuser: values.authDbSuperuser!, authDb: values.authDb!, created};
}

/**
 * Writes what the containers mount from runtime/: certificates, keys and passwords, each owned by
 * the container user that reads it, 0600 (0644 for public certificates). Returns the services
 * whose files changed, which a running stack must restart to pick up; they are also recorded as
 * pending restarts until the Start step has done them.
 */
export async function writeComposeRuntime(dir: InstallDir, keys: KeyServices, credentials: StackCredentials): Promise<Set<StackService>> {
  const changed = new Set<StackService>();
  // Each service is marked pending before a file it mounts changes: a run that dies half-way
  // still restarts it next time.
  const put = async (services: StackService[], rel: string, content: string, mode: number, owner: Ownership): Promise<void> => {
    const beforeChange = async (): Promise<void> => {
      await addPendingRestarts(dir, services);
    };
    if (await writeRuntimeFile(path.join(dir.runtimeDir, rel), content, {mode, owner, beforeChange})) for (const s of services) changed.add(s);
  };
  await ensureRuntimeDir(dir.runtimeDir, {mode: 0o700, owner: ROOT});
  const caPem = await fs.readFile(caCertFile(dir), 'utf8');
  const postgresTls = await loadCertificateWithKey(dir, keys.sealed, 'postgres');
  const proxyTls = await loadCertificateWithKey(dir, keys.sealed, 'proxy');

  await put(['postgres', 'auth-db', 'app', 'auth'], 'ca.crt', caPem, 0o644, ROOT);
  await ensureRuntimeDir(path.join(dir.runtimeDir, 'postgres'), {mode: 0o700, owner: ROOT});
  await put(['postgres', 'auth-db'], 'postgres/server.crt', postgresTls.certPem, 0o644, POSTGRES);
  await put(['postgres', 'auth-db'], 'postgres/server.key', postgresTls.keyPem, 0o600, POSTGRES);
  // Read by the image's entrypoint when it initialises an empty data volume, and never after.
  await put([], 'postgres/superuser.password', credentials.superuser, 0o600, POSTGRES);
  await ensureRuntimeDir(postgresSocketDir(dir), {mode: 0o700, owner: POSTGRES});
  await ensureRuntimeDir(path.join(dir.runtimeDir, 'auth-db'), {mode: 0o700, owner: ROOT});
  await put([], 'auth-db/superuser.password', credentials.authDbSuperuser, 0o600, POSTGRES);
  await ensureRuntimeDir(authDbSocketDir(dir), {mode: 0o700, owner: POSTGRES});

  await ensureRuntimeDir(path.join(dir.runtimeDir, 'auth'), {mode: 0o700, owner: ROOT});
  await put(['auth'], 'auth/db.password', credentials.authDb, 0o600, APP);
  // The public key set: auth serves it, the app verifies tokens with it. A copy here, so a rotation restarts both.
  await put(['auth', 'app'], 'auth/jwks.json', await fs.readFile(jwksFile(dir), 'utf8'), 0o644, APP);
  const signing = (await readJwtKeys(dir)).find((k) => k.state === 'signing');
  if (signing) await put(['auth'], 'auth/jwt-signing-key.pem', (await keys.sealed.get(jwtPrivateKeyName(signing.kid))).toString('utf8'), 0o600, APP);

  await ensureRuntimeDir(path.join(dir.runtimeDir, 'proxy'), {mode: 0o700, owner: ROOT});
  // The proxy serves its leaf with the CA after it, so clients that trust the CA can build the chain.
  await put(['proxy'], 'proxy/tls.crt', `${proxyTls.certPem.trimEnd()}\n${caPem.trimEnd()}\n`, 0o644, ROOT);
  await put(['proxy'], 'proxy/tls.key', proxyTls.keyPem, 0o600, PROXY);
  return changed;
}
