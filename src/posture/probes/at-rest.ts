import {promises as fs} from 'node:fs';
import path from 'node:path';

import {BackupCatalog, type BackupRecord} from '../../backup/catalog.js';
import {authenticateBackup, resolveSource} from '../../backup/verify.js';
import {clustersOf} from '../../control/clusters.js';
import {VerificationError} from '../../errors.js';
import {embeddedCluster} from '../../postgres/embedded-install.js';
import {backingOf} from '../../preflight/disk-encryption.js';
import {existingAncestor, findMount} from '../../preflight/mountinfo.js';
import {dataKeyId} from '../../secrets/data-keys.js';
import {readHeader} from '../../secrets/envelope.js';
import {MASTER_KEY_ID} from '../../secrets/master-key.js';
import {SECRET_DIR_MODE, SECRET_FILE_MODE} from '../../state/install-dir.js';
import type {Tenant} from '../../tenants/registry.js';
import {defineCheck, fail, manual, pass, runCheck, skip, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {onControl, type PostureContext, type Probe} from '../context.js';

/**
 * Data at rest: the secrets in the install directory are sealed and private, each tenant's newest
 * backup is an authenticated envelope under a data key that still exists, and the embedded
 * clusters' data directories sit on dm-crypt.
 */

const SECRETS_SEALED = defineCheck({
  id: 'at-rest.secrets-sealed',
  title: 'Every secret file is a sealed envelope',
  area: 'at-rest',
  controls: ['GDPR Art. 32'],
  severity: 'critical',
  expected: 'every file under secrets/ is a wrapped-key envelope under the master key, except the master key files themselves and the public metadata (master/keyring.json, jwt/keyset.json)',
  method: 'reads every file under secrets/ and parses its envelope header (magic, version, key id)',
  fix: 'remove the named file, or re-create the secret with the command that made it (docs/security.md)',
});

const SECRET_PERMISSIONS = defineCheck({
  id: 'at-rest.secret-permissions',
  title: 'Secret files 0600 and directories 0700, owned by dforge',
  area: 'at-rest',
  controls: ['GDPR Art. 32'],
  severity: 'critical',
  expected: 'files 0600 and directories 0700 under secrets/ (the master key files included), owned by the running user or root; no symbolic links',
  method: 'lstat of every entry under secrets/',
  fix: 'chmod 0600 the named files and 0700 the named directories; chown them to the user dforge runs as (docs/security.md#secrets-under-faults)',
});

const BACKUP_ENCRYPTED = defineCheck({
  id: 'at-rest.backup-encrypted',
  title: 'Newest backup authenticated under an existing data key',
  area: 'at-rest',
  controls: ['GDPR Art. 32'],
  severity: 'high',
  expected: "the tenant's newest catalog backup has an authentic header bound to its catalog entry, manifest and place, and its file key is wrapped by a data key version that exists",
  method: 'reads the header of the newest backup in the catalog, opens its wrapped file key with the named data key and checks the header MAC (no full decrypt)',
  fix: 'dforge backup verify <id> --deep; take a fresh backup with dforge backup --tenant <slug>',
});

const DATA_VOLUME = defineCheck({
  id: 'at-rest.data-volume',
  title: 'Cluster data directory on an encrypted block device',
  area: 'at-rest',
  controls: ['GDPR Art. 32'],
  severity: 'medium',
  expected: "the embedded cluster's data directory is on dm-crypt (LUKS or plain), directly or below LVM/RAID",
  method: 'mount of the data directory from /proc/self/mountinfo, its block device walked down through /sys/class/block to a CRYPT- device-mapper target',
  fix: 'put the data directory on a LUKS volume (cryptsetup luksFormat, or LVM on LUKS); backups and secrets are encrypted either way (dforge preflight shows it too)',
});

export const AT_REST_CHECKS: readonly CheckDefinition[] = [SECRETS_SEALED, SECRET_PERMISSIONS, BACKUP_ENCRYPTED, DATA_VOLUME];

/** Plaintext files secrets/ holds by design: the master key material (provider file) and public metadata. */
const PLAINTEXT_BY_DESIGN = [/^master\/v[1-9][0-9]*\.key$/, /^master\/keyring\.json$/, /^jwt\/keyset\.json$/];

interface SecretEntry {
  readonly relative: string;
  readonly full: string;
  readonly stat: import('node:fs').Stats;
}

/** Every entry under secrets/ (the directory itself included), without following links. */
async function secretEntries(root: string): Promise<SecretEntry[]> {
  const out: SecretEntry[] = [];
  const visit = async (full: string): Promise<void> => {
    const stat = await fs.lstat(full);
    out.push({relative: path.relative(root, full), full, stat});
    if (stat.isDirectory()) for (const name of (await fs.readdir(full)).sort()) await visit(path.join(full, name));
  };
  await visit(root);
  return out;
}

async function secretsSealed(ctx: PostureContext): Promise<Finding> {
  const files = (await secretEntries(ctx.dir.secretsDir)).filter((e) => e.stat.isFile());
  const plaintext: string[] = [];
  let sealed = 0;
  for (const file of files) {
    const blob = await fs.readFile(file.full);
    let header: ReturnType<typeof readHeader> | undefined;
    try {
      header = readHeader(blob, file.relative);
    } catch {
      header = undefined;
    }
    if (header?.keyId === MASTER_KEY_ID) sealed++;
    else if (!PLAINTEXT_BY_DESIGN.some((re) => re.test(file.relative))) plaintext.push(file.full);
  }
  const observed = `${sealed} sealed file(s), ${files.length - sealed - plaintext.length} master key/metadata file(s)`;
  if (plaintext.length > 0) return fail(`${observed}; not sealed: ${plaintext.join(', ')}`, 'a file under secrets/ is not a sealed envelope: a secret may be stored in plaintext');
  return pass(observed);
}

async function secretPermissions(ctx: PostureContext): Promise<Finding> {
  const entries = await secretEntries(ctx.dir.secretsDir);
  const uid = process.getuid?.();
  const problems: string[] = [];
  for (const e of entries) {
    const mode = e.stat.mode & 0o777;
    const octal = mode.toString(8).padStart(4, '0');
    if (e.stat.isSymbolicLink()) problems.push(`${e.full} is a symbolic link`);
    else if (e.stat.isDirectory() && mode !== SECRET_DIR_MODE) problems.push(`${e.full} is ${octal}, expected 0700`);
    else if (e.stat.isFile() && mode !== SECRET_FILE_MODE) problems.push(`${e.full} is ${octal}, expected 0600`);
    else if (!e.stat.isDirectory() && !e.stat.isFile()) problems.push(`${e.full} is neither a file nor a directory`);
    if (uid !== undefined && e.stat.uid !== uid && e.stat.uid !== 0) problems.push(`${e.full} is owned by uid ${e.stat.uid} (dforge runs as ${uid})`);
  }
  const masterFiles = entries.filter((e) => /^master\/v[0-9]+\.key$/.test(e.relative)).length;
  const observed = `${entries.length} entries under ${ctx.dir.secretsDir} (${masterFiles} master key file(s))`;
  if (problems.length > 0) return fail(`${observed}; ${problems.join('; ')}`, 'another local user may read or replace a secret');
  return pass(`${observed}: files 0600, directories 0700`);
}

const newestByRun = new WeakMap<PostureContext, Promise<Map<string, BackupRecord>>>();

/**
 * Newest tenant backup per tenant, from one catalog query (the catalog lists newest first), read
 * once per run: the at-rest and backups probes both ask.
 */
export function newestTenantBackups(ctx: PostureContext): Promise<Map<string, BackupRecord>> {
  let newest = newestByRun.get(ctx);
  if (!newest) {
    newest = onControl(ctx, async (plane) => {
      const byTenant = new Map<string, BackupRecord>();
      for (const r of await new BackupCatalog(plane.control).list({kind: 'tenant'})) if (!byTenant.has(r.tenant)) byTenant.set(r.tenant, r);
      return byTenant;
    });
    newestByRun.set(ctx, newest);
  }
  return newest;
}

/** Why a tenant has no backups to look at, if it should not have any. */
export function noBackupsExpected(ctx: PostureContext, tenant: Tenant): string | undefined {
  if (tenant.status !== 'active' && tenant.status !== 'suspended') return `tenant ${tenant.slug} is ${tenant.status}: only active and suspended tenants are backed up`;
  if ((ctx.config.regions[tenant.region]?.backup?.destinations ?? []).length === 0) return `region ${tenant.region} declares no backup destination`;
  return undefined;
}

async function backupEncrypted(ctx: PostureContext, tenant: Tenant, record: BackupRecord | undefined): Promise<Finding> {
  const notExpected = noBackupsExpected(ctx, tenant);
  if (!record) return notExpected ? skip(notExpected) : warn('no backup yet', `take one with: dforge backup --tenant ${tenant.slug}`);
  try {
    const auth = await ctx.limit(() => onControl(ctx, async (plane) => authenticateBackup(plane, await resolveSource(plane, record.id))));
    const h = auth.header;
    // parseHeader binds the key id to the tenant; this says it in the result and guards the invariant.
    if (h.tenant !== tenant.slug || h.keyId !== dataKeyId(tenant.slug)) return fail(`backup ${record.id} is of ${h.tenant} under ${h.keyId}`, `expected tenant ${tenant.slug} under ${dataKeyId(tenant.slug)}`);
    return pass(`backup ${h.backupId} (${h.createdAt}): header authenticated, file key wrapped by ${h.keyId} v${h.keyVersion}`);
  } catch (err) {
    if (err instanceof VerificationError) return fail(`backup ${record.id}: ${err.message}`, 'the newest backup was tampered with, replaced, removed, or its data key is gone');
    throw err;
  }
}

async function dataVolume(ctx: PostureContext, name: string): Promise<Finding> {
  const entry = clustersOf(ctx.config).get(name)!;
  if (entry.cluster.kind !== 'embedded') {
    return manual(
      entry.cluster.kind === 'external'
        ? `cluster ${name} is managed outside dforge: attest the encryption at rest of its storage`
        : `cluster ${name} runs in the ${ctx.config.target} data plane: attest the encryption of its volume (or of the host disk under it)`,
    );
  }
  const dataDir = embeddedCluster(ctx.dir, ctx.config, name).dataDir;
  const measured = await existingAncestor(dataDir);
  const mount = await findMount(measured);
  if (!mount) return warn(`${dataDir}: mount not found in /proc/self/mountinfo`, 'encryption at rest could not be established (GDPR Art. 32)');
  const backing = await backingOf(mount);
  if (backing.kind === 'not-block') return warn(`${dataDir}: ${backing.fsType} on ${mount.mountPoint}, not a block device of this host`, 'encryption at rest could not be established (GDPR Art. 32)');
  if (backing.encrypted) return pass(`${dataDir}: ${backing.device}, dm-crypt ${backing.cryptDevice ?? ''}`.trimEnd());
  return warn(`${dataDir}: ${backing.device}, not encrypted`, 'the live database files are readable from the disk (GDPR Art. 32); backups and secrets are encrypted regardless');
}

export const atRestProbe: Probe = async (ctx) => {
  const install = Promise.all([
    runCheck(SECRETS_SEALED, 'install', () => ctx.limit(() => secretsSealed(ctx))),
    runCheck(SECRET_PERMISSIONS, 'install', () => ctx.limit(() => secretPermissions(ctx))),
  ]);
  const newest = newestTenantBackups(ctx);
  newest.catch(() => undefined);
  const tenants = Promise.all(ctx.tenants.map((t) => runCheck(BACKUP_ENCRYPTED, `tenant:${t.slug}`, async () => backupEncrypted(ctx, t, (await newest).get(t.slug)))));
  const volumes = Promise.all([...clustersOf(ctx.config).keys()].map((name) => runCheck(DATA_VOLUME, `cluster:${name}`, () => ctx.limit(() => dataVolume(ctx, name)))));
  const results: CheckResult[][] = await Promise.all([install, tenants, volumes]);
  return results.flat();
};
