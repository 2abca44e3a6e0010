import {promises as fs} from 'node:fs';
import path from 'node:path';

import {pkiDir} from './pki-paths.js';
import {UserError} from '../errors.js';
import type {SealedStore} from '../secrets/sealed-store.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * Where the install's certificates live: public certificates in <dir>/pki/<name>.crt (0644, so
 * services can read them), private keys as sealed secrets pki/<name>.key. Names: `ca`, `proxy`,
 * `postgres`, and one per internal service.
 */
export interface StoredCertificate {
  readonly name: string;
  readonly certPem: string;
  /** Where the certificate came from: issued by the install CA, or imported by the operator. */
  readonly source: 'internal' | 'imported';
}

const keyName = (name: string): string => `pki/${name}.key`;
const certFile = (dir: InstallDir, name: string): string => path.join(pkiDir(dir), `${name}.crt`);
const sourcesFile = (dir: InstallDir): string => path.join(pkiDir(dir), 'sources.json');

export async function saveCertificate(dir: InstallDir, sealed: SealedStore, name: string, pems: {certPem: string; keyPem: string}, source: StoredCertificate['source']): Promise<void> {
  await fs.mkdir(pkiDir(dir), {recursive: true, mode: 0o755});
  // The key first: a certificate on disk always has its key, even after a crash in between.
  await sealed.put(keyName(name), pems.keyPem);
  await writeFileAtomic(certFile(dir, name), pems.certPem.endsWith('\n') ? pems.certPem : `${pems.certPem}\n`, {mode: 0o644});
  const sources = await readSources(dir);
  sources[name] = source;
  await writeFileAtomic(sourcesFile(dir), `${JSON.stringify(sources, null, 2)}\n`, {mode: 0o644});
}

export async function readCertificate(dir: InstallDir, name: string): Promise<StoredCertificate | undefined> {
  try {
    const certPem = await fs.readFile(certFile(dir, name), 'utf8');
    return {name, certPem, source: (await readSources(dir))[name] ?? 'internal'};
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export async function listCertificates(dir: InstallDir): Promise<StoredCertificate[]> {
  const files = await fs.readdir(pkiDir(dir)).catch(() => [] as string[]);
  const out: StoredCertificate[] = [];
  for (const f of files.filter((x) => x.endsWith('.crt')).sort()) {
    const cert = await readCertificate(dir, f.slice(0, -4));
    if (cert) out.push(cert);
  }
  return out;
}

/** A certificate with its private key, for a service that must hold both (PostgreSQL, the proxy). */
export async function loadCertificateWithKey(dir: InstallDir, sealed: SealedStore, name: string): Promise<{certPem: string; keyPem: string}> {
  const cert = await readCertificate(dir, name);
  if (!cert) throw new UserError(`no ${name} certificate in ${pkiDir(dir)}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});
  return {certPem: cert.certPem, keyPem: (await sealed.get(keyName(name))).toString('utf8')};
}

async function readSources(dir: InstallDir): Promise<Record<string, StoredCertificate['source']>> {
  try {
    return JSON.parse(await fs.readFile(sourcesFile(dir), 'utf8')) as Record<string, StoredCertificate['source']>;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new UserError(`cannot read ${sourcesFile(dir)}: ${(err as Error).message}`, {nextSteps: ['Restore pki/ from a backup of the install directory.']});
  }
}
