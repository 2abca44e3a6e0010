import {promises as fs} from 'node:fs';
import path from 'node:path';
import {rootCertificates} from 'node:tls';

import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile, pkiDir} from '../control/plane.js';
import {UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import type {CertificateReport, KeyAlgorithm, LeafUsage} from '../pki/index.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {listCertificates, loadCertificateWithKey, readCertificate, saveCertificate} from './store.js';

/** Internal service names the CA may certify besides the domain (compose service names, k8s). */
export const INTERNAL_NAMES = ['postgres', 'auth-db', 'auth', 'app', 'proxy', 'localhost', 'svc.cluster.local'] as const;

interface LeafSpec {
  readonly name: string;
  readonly commonName: string;
  readonly dnsNames: string[];
  readonly ipAddresses: string[];
  readonly usage: LeafUsage;
}

/** The leaves an install needs: the HTTPS proxy, PostgreSQL, and the internal services. */
function leafSpecs(config: DforgeConfig): LeafSpec[] {
  return [
    {name: 'proxy', commonName: config.domain, dnsNames: [config.domain, ...config.tls.extraSans], ipAddresses: [], usage: 'server'},
    {name: 'postgres', commonName: 'postgres', dnsNames: ['postgres', 'auth-db', 'localhost'], ipAddresses: ['127.0.0.1', '::1'], usage: 'server'},
    {name: 'auth', commonName: 'auth', dnsNames: ['auth'], ipAddresses: [], usage: 'server-client'},
    {name: 'app', commonName: 'app', dnsNames: ['app'], ipAddresses: [], usage: 'server-client'},
  ];
}

const pki = async (): Promise<typeof import('../pki/index.js')> => import('../pki/index.js');

export interface GeneratedCertificate {
  readonly name: string;
  readonly action: 'created' | 'kept' | 'renewed' | 'skipped-imported';
  readonly notAfter: string;
  readonly dnsNames: string[];
  readonly ipAddresses: string[];
}

export interface GenerateResult {
  readonly caFingerprint: string;
  readonly caFile: string;
  readonly trustStore: string;
  readonly certificates: GeneratedCertificate[];
}

/** Creates the CA and every leaf that does not exist yet. Never replaces an existing one. */
export async function generateCertificates(dir: InstallDir, options: {algorithm?: KeyAlgorithm; clock?: () => Date; command: string}): Promise<GenerateResult> {
  return withPki(dir, options, async (ctx) => {
    const {generateCa, issueLeaf, inspectCertificate, caToPkcs12} = await pki();
    const now = ctx.now();
    const certificates: GeneratedCertificate[] = [];
    let ca = await readCertificate(dir, 'ca');
    if (!ca) {
      const issued = await generateCa({domain: ctx.config.domain, internalNames: [...ctx.config.tls.extraSans, ...INTERNAL_NAMES], algorithm: options.algorithm, now});
      await saveCertificate(dir, ctx.sealed, 'ca', issued, 'internal');
      ca = (await readCertificate(dir, 'ca'))!;
      certificates.push(describe('ca', 'created', inspectCertificate(ca.certPem, {now})));
    } else {
      certificates.push(describe('ca', 'kept', inspectCertificate(ca.certPem, {now})));
    }
    const caWithKey = await loadCertificateWithKey(dir, ctx.sealed, 'ca');
    for (const spec of leafSpecs(ctx.config)) {
      const existing = await readCertificate(dir, spec.name);
      if (existing) {
        certificates.push(describe(spec.name, 'kept', inspectCertificate(existing.certPem, {now})));
        continue;
      }
      const leaf = await issueLeaf(caWithKey, {...spec, algorithm: options.algorithm, now});
      await saveCertificate(dir, ctx.sealed, spec.name, leaf, 'internal');
      certificates.push(describe(spec.name, 'created', inspectCertificate(leaf.certPem, {now})));
    }
    const trustStore = path.join(pkiDir(dir), 'ca.p12');
    await writeFileAtomic(trustStore, await caToPkcs12(ca.certPem, {friendlyName: `dforge CA ${ctx.config.domain}`}), {mode: 0o644});
    return {caFingerprint: inspectCertificate(ca.certPem, {now}).sha256Fingerprint, caFile: caCertFile(dir), trustStore, certificates};
  });
}

/** Re-issues internal leaves that reached 2/3 of their lifetime (or the named ones); imported ones are left alone. */
export async function renewCertificates(dir: InstallDir, options: {names?: string[]; force?: boolean; clock?: () => Date; command: string}): Promise<GeneratedCertificate[]> {
  return withPki(dir, options, async (ctx) => {
    const {issueLeaf, inspectCertificate} = await pki();
    const now = ctx.now();
    const caWithKey = await loadCertificateWithKey(dir, ctx.sealed, 'ca');
    const specs = leafSpecs(ctx.config);
    const unknown = (options.names ?? []).filter((n) => !specs.some((s) => s.name === n));
    if (unknown.length > 0) throw new UserError(`no certificate named ${unknown.join(', ')}`, {nextSteps: [`Names: ${specs.map((s) => s.name).join(', ')}`]});
    const out: GeneratedCertificate[] = [];
    for (const spec of specs.filter((s) => !options.names || options.names.includes(s.name))) {
      const existing = await readCertificate(dir, spec.name);
      if (existing?.source === 'imported') {
        out.push(describe(spec.name, 'skipped-imported', inspectCertificate(existing.certPem, {now})));
        continue;
      }
      const due = !existing || options.force || (options.names?.includes(spec.name) ?? false) || inspectCertificate(existing.certPem, {now}).renewDue;
      if (!due) {
        out.push(describe(spec.name, 'kept', inspectCertificate(existing!.certPem, {now})));
        continue;
      }
      const leaf = await issueLeaf(caWithKey, {...spec, now});
      await saveCertificate(dir, ctx.sealed, spec.name, leaf, 'internal');
      out.push(describe(spec.name, existing ? 'renewed' : 'created', inspectCertificate(leaf.certPem, {now})));
    }
    return out;
  });
}

export interface CertificateStatus {
  readonly name: string;
  readonly source: 'internal' | 'imported';
  readonly report: CertificateReport;
}

export interface CertsStatus {
  readonly certificates: CertificateStatus[];
  /** Human sentences for what needs attention: expiry within 30 days, renewal due, a broken chain. */
  readonly warnings: string[];
}

/** Expiry, chain, SANs and key type of every certificate; warns at 30 days. Reads no private key. */
export async function certificatesStatus(dir: InstallDir, options: {clock?: () => Date} = {}): Promise<CertsStatus> {
  const {inspectCertificate} = await pki();
  const now = (options.clock ?? (() => new Date()))();
  const stored = await listCertificates(dir);
  const ca = stored.find((c) => c.name === 'ca');
  if (!ca) throw new UserError(`no CA in ${pkiDir(dir)}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});
  const certificates: CertificateStatus[] = [];
  const warnings: string[] = [];
  for (const cert of stored) {
    const report = inspectCertificate(cert.certPem, {now, ...(cert.name === 'ca' || cert.source === 'imported' ? {} : {caPem: ca.certPem})});
    certificates.push({name: cert.name, source: cert.source, report});
    if (report.expired) warnings.push(`${cert.name} expired on ${report.notAfter}: run dforge certs renew ${cert.name}`);
    else if (report.expiresSoon) warnings.push(`${cert.name} expires in ${report.daysLeft} days (${report.notAfter}): run dforge certs renew ${cert.name}`);
    else if (report.renewDue && cert.name !== 'ca') warnings.push(`${cert.name} is past 2/3 of its lifetime: run dforge certs renew`);
    if (report.chainValid === false) warnings.push(`${cert.name} does not verify against the install CA: ${report.chainError ?? 'unknown reason'}`);
  }
  return {certificates, warnings};
}

export interface ImportResult {
  readonly name: string;
  readonly report: CertificateReport;
  readonly chain: ReadonlyArray<{subject: string; issuer: string; notAfter: string}>;
  readonly anchor: string;
}

/**
 * Installs an operator-provided certificate (typically the proxy's, from a public or corporate CA)
 * after checking that the key matches, the chain verifies (against the system trust store, the
 * install CA, or --ca) and the SANs cover the domain.
 */
export async function importCertificate(
  dir: InstallDir,
  options: {name: string; certFile: string; keyFile: string; caFile?: string; clock?: () => Date; command: string},
): Promise<ImportResult> {
  return withPki(dir, options, async (ctx) => {
    const {checkImport} = await pki();
    const read = (file: string): Promise<string> =>
      fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
        throw new UserError(`cannot read ${file}: ${err.code ?? err.message}`, {nextSteps: ['Check the path and that dforge may read it.']});
      });
    const [certPem, keyPem] = await Promise.all([read(options.certFile), read(options.keyFile)]);
    const trusted = [...rootCertificates];
    const ours = await readCertificate(dir, 'ca');
    if (ours) trusted.push(ours.certPem);
    if (options.caFile) trusted.push(await read(options.caFile));
    const result = await checkImport({certPem, keyPem, trustedCaPems: trusted, domain: ctx.config.domain, now: ctx.now()});
    await saveCertificate(dir, ctx.sealed, options.name, {certPem: result.chainPem, keyPem: result.keyPem}, 'imported');
    return {name: options.name, report: result.report.leaf, chain: result.report.chain, anchor: result.report.anchor};
  });
}

/** The CA certificate as PEM or as a PKCS#12 trust store (certificate only, never the key). */
export async function exportCa(dir: InstallDir, options: {format: 'pem' | 'p12'; password?: string}): Promise<Buffer> {
  const ca = await readCertificate(dir, 'ca');
  if (!ca) throw new UserError(`no CA in ${pkiDir(dir)}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});
  if (options.format === 'pem') return Buffer.from(ca.certPem);
  const {caToPkcs12} = await pki();
  return caToPkcs12(ca.certPem, {password: options.password ?? '', friendlyName: 'dforge CA'});
}

function describe(name: string, action: GeneratedCertificate['action'], r: CertificateReport): GeneratedCertificate {
  return {name, action, notAfter: r.notAfter, dnsNames: [...r.dnsNames], ipAddresses: [...r.ipAddresses]};
}

interface PkiContext {
  readonly config: DforgeConfig;
  readonly sealed: Awaited<ReturnType<typeof openKeyServices>>['sealed'];
  now(): Date;
}

async function withPki<T>(dir: InstallDir, options: {clock?: () => Date; command: string}, fn: (ctx: PkiContext) => Promise<T>): Promise<T> {
  const config = await loadConfigFile(dir.configFile);
  const keys = await openKeyServices(dir);
  const lock = await acquireLock(dir.locksDir, 'certs', {command: options.command});
  try {
    return await fn({config, sealed: keys.sealed, now: options.clock ?? (() => new Date())});
  } finally {
    await lock.release();
  }
}
