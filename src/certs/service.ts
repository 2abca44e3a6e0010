import {promises as fs} from 'node:fs';
import path from 'node:path';
import {rootCertificates} from 'node:tls';

import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile, pkiDir} from './pki-paths.js';
import {UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import type {CertificateReport, ImportReport, KeyAlgorithm, LeafUsage, NameConstraints} from '../pki/index.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {crashPoint} from '../state/crash-point.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {type InternalService, internalSubtrees, serviceHost, serviceNames} from './service-names.js';
import {listCertificates, loadCertificateWithKey, readCertificate, saveCertificate} from './store.js';


interface LeafSpec {
  readonly name: string;
  readonly commonName: string;
  readonly dnsNames: string[];
  readonly ipAddresses: string[];
  readonly usage: LeafUsage;
}

/**
 * The leaves an install needs: the HTTPS proxy, PostgreSQL (both clusters of the stack share it,
 * and dforge on the host reaches them through loopback), and the internal services.
 */
function leafSpecs(config: DforgeConfig): LeafSpec[] {
  const host = (service: InternalService): string => serviceHost(config, service);
  return [
    {name: 'proxy', commonName: config.domain, dnsNames: [config.domain, ...config.tls.extraSans], ipAddresses: [], usage: 'server'},
    {name: 'postgres', commonName: host('postgres'), dnsNames: [...serviceNames(config, 'postgres'), ...serviceNames(config, 'auth-db'), 'localhost'], ipAddresses: ['127.0.0.1', '::1'], usage: 'server'},
    {name: 'auth', commonName: host('auth'), dnsNames: serviceNames(config, 'auth'), ipAddresses: [], usage: 'server-client'},
    {name: 'app', commonName: host('app'), dnsNames: serviceNames(config, 'app'), ipAddresses: [], usage: 'server-client'},
  ];
}

/** The name constraints this install's CA must carry: the domain, tls.extraSans and the internal subtrees. */
async function wantedConstraints(config: DforgeConfig): Promise<NameConstraints> {
  const {caNameConstraints} = await pki();
  return caNameConstraints({domain: config.domain, internalNames: [...config.tls.extraSans, ...internalSubtrees(config)]});
}

const pki = async (): Promise<typeof import('../pki/index.js')> => import('../pki/index.js');

export interface GeneratedCertificate {
  readonly name: string;
  /** `replaced`: the CA only, when renew had to mint a new one. */
  readonly action: 'created' | 'kept' | 'renewed' | 'replaced' | 'skipped-imported';
  readonly notAfter: string;
  readonly dnsNames: string[];
  readonly ipAddresses: string[];
  /** Why a certificate was replaced or renewed ahead of its time. */
  readonly reason?: string;
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
    const {generateCa, issueLeaf, inspectCertificate, sameNameConstraints} = await pki();
    const now = ctx.now();
    const certificates: GeneratedCertificate[] = [];
    let ca = await readCertificate(dir, 'ca');
    if (!ca) {
      const issued = await generateCa({domain: ctx.config.domain, internalNames: [...ctx.config.tls.extraSans, ...internalSubtrees(ctx.config)], algorithm: options.algorithm, now});
      await saveCertificate(dir, ctx.sealed, 'ca', issued, 'internal');
      crashPoint('certs.ca-saved');
      ca = (await readCertificate(dir, 'ca'))!;
      certificates.push(describe('ca', 'created', inspectCertificate(ca.certPem, {now})));
    } else {
      const report = inspectCertificate(ca.certPem, {now});
      const wanted = await wantedConstraints(ctx.config);
      // Keeping it would leave the stack asking for names its certificates do not carry.
      if (!report.nameConstraints || !sameNameConstraints(report.nameConstraints, wanted)) {
        throw new UserError(`${caConstraintsProblem(report.nameConstraints, wanted)}, and generate never replaces a certificate`, {
          nextSteps: [
            'Move to a new CA with: dforge certs renew (it re-issues every internal leaf; clients must then trust the new CA).',
            'See docs/operations.md, "Moving to a new CA", for what changes and how to roll back.',
          ],
        });
      }
      certificates.push(describe('ca', 'kept', report));
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
      crashPoint(`certs.leaf-saved.${spec.name}`);
      certificates.push(describe(spec.name, 'created', inspectCertificate(leaf.certPem, {now})));
    }
    const trustStore = await writeTrustStore(dir, ca.certPem, ctx.config);
    return {caFingerprint: inspectCertificate(ca.certPem, {now}).sha256Fingerprint, caFile: caCertFile(dir), trustStore, certificates};
  });
}

export interface RenewResult {
  /** Present when renew replaced the CA: why, and what clients must do now. */
  readonly caReplaced?: {readonly reason: string; readonly previousFingerprint: string; readonly fingerprint: string; readonly trustStore: string};
  readonly certificates: GeneratedCertificate[];
}

/**
 * Re-issues internal leaves that reached 2/3 of their lifetime (or the named ones); imported ones
 * are left alone. A leaf that the current CA did not issue, or whose names are not the ones the
 * configuration calls for, is re-issued as well.
 *
 * When the CA's name constraints are not the ones this install needs (a CA made before the
 * internal names moved under a private suffix permits bare names like `app`, and with them whole
 * public top-level domains; or tls.extraSans changed since), the CA cannot be fixed in place: a
 * new one is minted and every internal leaf re-issued under it, whatever `names` says.
 */
export async function renewCertificates(dir: InstallDir, options: {names?: string[]; force?: boolean; clock?: () => Date; command: string}): Promise<RenewResult> {
  return withPki(dir, options, async (ctx) => {
    const {generateCa, issueLeaf, inspectCertificate, sameNameConstraints, keyAlgorithms} = await pki();
    const now = ctx.now();
    const specs = leafSpecs(ctx.config);
    const unknown = (options.names ?? []).filter((n) => !specs.some((s) => s.name === n));
    if (unknown.length > 0) throw new UserError(`no certificate named ${unknown.join(', ')}`, {nextSteps: [`Names: ${specs.map((s) => s.name).join(', ')}`]});
    const current = await readCertificate(dir, 'ca');
    if (!current) throw new UserError(`no CA in ${pkiDir(dir)}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});

    const out: GeneratedCertificate[] = [];
    const currentReport = inspectCertificate(current.certPem, {now});
    const wanted = await wantedConstraints(ctx.config);
    let caReplaced: RenewResult['caReplaced'];
    let caPem = current.certPem;
    if (!currentReport.nameConstraints || !sameNameConstraints(currentReport.nameConstraints, wanted)) {
      const reason = caConstraintsProblem(currentReport.nameConstraints, wanted);
      const algorithm = keyAlgorithms.find((a) => a === currentReport.keyType);
      const issued = await generateCa({domain: ctx.config.domain, internalNames: [...ctx.config.tls.extraSans, ...internalSubtrees(ctx.config)], algorithm, now});
      await saveCertificate(dir, ctx.sealed, 'ca', issued, 'internal');
      crashPoint('certs.ca-replaced');
      caPem = issued.certPem;
      const report = inspectCertificate(caPem, {now});
      const trustStore = await writeTrustStore(dir, caPem, ctx.config);
      caReplaced = {reason, previousFingerprint: currentReport.sha256Fingerprint, fingerprint: report.sha256Fingerprint, trustStore};
      out.push(describe('ca', 'replaced', report, reason));
    }

    const caWithKey = await loadCertificateWithKey(dir, ctx.sealed, 'ca');
    const wantedNow = (name: string): boolean => caReplaced !== undefined || !options.names || options.names.includes(name);
    for (const spec of specs.filter((s) => wantedNow(s.name))) {
      const existing = await readCertificate(dir, spec.name);
      if (existing?.source === 'imported') {
        out.push(describe(spec.name, 'skipped-imported', inspectCertificate(existing.certPem, {now})));
        continue;
      }
      const reason = existing ? leafProblem(inspectCertificate(existing.certPem, {now, caPem}), spec) : undefined;
      const due = !existing || reason !== undefined || options.force || (options.names?.includes(spec.name) ?? false) || inspectCertificate(existing.certPem, {now}).renewDue;
      if (!due) {
        out.push(describe(spec.name, 'kept', inspectCertificate(existing!.certPem, {now})));
        continue;
      }
      const leaf = await issueLeaf(caWithKey, {...spec, now});
      await saveCertificate(dir, ctx.sealed, spec.name, leaf, 'internal');
      crashPoint(`certs.leaf-saved.${spec.name}`);
      out.push(describe(spec.name, existing ? 'renewed' : 'created', inspectCertificate(leaf.certPem, {now}), reason));
    }
    return {...(caReplaced ? {caReplaced} : {}), certificates: out};
  });
}

/** Why the CA's constraints are not the wanted ones, in words an operator can act on. */
function caConstraintsProblem(have: NameConstraints | null, want: NameConstraints): string {
  if (!have) return 'the CA has no name constraints: it can vouch for any name';
  const extra = have.permitted.dns.filter((d) => !want.permitted.dns.includes(d));
  const missing = want.permitted.dns.filter((d) => !have.permitted.dns.includes(d));
  const parts: string[] = [];
  if (extra.length > 0) parts.push(`permits ${extra.join(', ')}, which this install does not use (a DNS constraint covers every name below it)`);
  if (missing.length > 0) parts.push(`does not permit ${missing.join(', ')}`);
  if (have.permitted.email.length === 0 || have.permitted.uri.length === 0) parts.push('does not constrain email and URI names');
  if (parts.length === 0) parts.push('permits other IP ranges than loopback');
  return `the CA's name constraints are not the ones this install needs: it ${parts.join('; it ')}`;
}

/** Why an internal leaf must be re-issued now whatever its age, or undefined. */
function leafProblem(report: CertificateReport, spec: LeafSpec): string | undefined {
  if (report.chainValid === false) return `not issued by the current CA (${report.chainError ?? 'the chain does not verify'})`;
  const sorted = (names: readonly string[]): string => [...new Set(names.map((n) => n.toLowerCase()))].sort().join(',');
  if (sorted(report.dnsNames) !== sorted(spec.dnsNames) || sorted(report.ipAddresses) !== sorted(spec.ipAddresses)) {
    return `its names (${[...report.dnsNames, ...report.ipAddresses].join(', ')}) are not the ones the configuration calls for`;
  }
  return undefined;
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
  const {inspectCertificate, sameNameConstraints} = await pki();
  const config = await loadConfigFile(dir.configFile);
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
    if (cert.name === 'ca') {
      const wanted = await wantedConstraints(config);
      if (!report.nameConstraints || !sameNameConstraints(report.nameConstraints, wanted)) {
        warnings.push(`${caConstraintsProblem(report.nameConstraints, wanted)}: run dforge certs renew to move to a new CA (see docs/operations.md, "Moving to a new CA")`);
      }
    }
  }
  return {certificates, warnings};
}

export interface ImportResult {
  readonly name: string;
  readonly report: CertificateReport;
  readonly chain: ImportReport['chain'];
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

function describe(name: string, action: GeneratedCertificate['action'], r: CertificateReport, reason?: string): GeneratedCertificate {
  return {name, action, notAfter: r.notAfter, dnsNames: [...r.dnsNames], ipAddresses: [...r.ipAddresses], ...(reason ? {reason} : {})};
}

/** pki/ca.p12: the CA for trust stores that import PKCS#12. */
async function writeTrustStore(dir: InstallDir, caPem: string, config: DforgeConfig): Promise<string> {
  const {caToPkcs12} = await pki();
  const trustStore = path.join(pkiDir(dir), 'ca.p12');
  await writeFileAtomic(trustStore, await caToPkcs12(caPem, {friendlyName: `dforge CA ${config.domain}`}), {mode: 0o644});
  crashPoint('certs.trust-store-written');
  return trustStore;
}

interface PkiContext {
  readonly config: DforgeConfig;
  readonly sealed: Awaited<ReturnType<typeof openKeyServices>>['sealed'];
  now(): Date;
}

/**
 * Runs `fn` under the certs lock and, since every caller seals private keys under the master key,
 * inside keyring.withWrites: a master rotation cannot commit between a key's sealing and the
 * moment the sealed file is where the rotation's re-wrap finds it.
 */
async function withPki<T>(dir: InstallDir, options: {clock?: () => Date; command: string}, fn: (ctx: PkiContext) => Promise<T>): Promise<T> {
  const config = await loadConfigFile(dir.configFile);
  const keys = await openKeyServices(dir);
  const lock = await acquireLock(dir.locksDir, 'certs', {command: options.command});
  try {
    return await keys.keyring.withWrites(options.command, () => fn({config, sealed: keys.sealed, now: options.clock ?? (() => new Date())}));
  } finally {
    await lock.release();
  }
}
