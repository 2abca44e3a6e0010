import path from 'node:path';

import {z} from 'zod';

/**
 * The schema of `dforge.yaml` (DESIGN §4). It holds no secrets: credentials are references to
 * files under `secrets/`. Every object is strict, so a misspelt key is an error, not a silent no-op.
 */

const name = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,39}$/, 'use lowercase letters, digits and "-", starting with a letter (at most 40 characters)');

const hostname = z
  .string()
  .min(1)
  .max(253)
  .regex(/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/, 'must be a DNS name in lowercase, e.g. dforge.example.com');

const port = z.number().int().min(1).max(65_535);

/** A reference to a secret file under `secrets/`; the value itself never appears in the config. */
const secretRef = z
  .strictObject({
    secret: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/, 'a path under secrets/, e.g. postgres/eu-1-admin'),
  })
  .describe('Reference to a sealed secret under secrets/. Never the secret itself.');

/** An image reference; pinning by digest is what bundles do, so it is allowed here too. */
const imageRef = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$/, 'an image reference such as registry.example.com/dforge/app:1.4.2 or name@sha256:<digest>');

/** How many tenants a cluster takes; placement fills the cluster with the most free capacity. */
const maxTenants = z.number().int().positive().max(100_000).optional().describe('Capacity: the most tenants placed on this cluster. Unset: no limit.');

const embeddedCluster = z.strictObject({
  name,
  kind: z.literal('embedded').describe('PostgreSQL run by dforge from the host binaries, inside the install directory.'),
  port: port.default(5432),
  maxTenants,
});

const bundledCluster = z.strictObject({
  name,
  kind: z.literal('bundled').describe('The postgres service of the compose stack or Kubernetes StatefulSet.'),
  port: port.default(5432).describe('Compose: the host port the postgres service is published on, bound to 127.0.0.1 only, so dforge on the host reaches it.'),
  maxTenants,
});

const externalCluster = z.strictObject({
  name,
  kind: z.literal('external').describe('A PostgreSQL server managed outside dforge.'),
  host: hostname.or(z.ipv4()).or(z.ipv6()),
  port: port.default(5432),
  database: z.string().min(1).default('postgres'),
  admin: secretRef.describe('Credentials of the role dforge bootstraps the provisioner with.'),
  caFile: z.string().min(1).optional().describe('CA bundle that signs the server certificate; default: the dforge CA.'),
  maxTenants,
});

const cluster = z.discriminatedUnion('kind', [embeddedCluster, bundledCluster, externalCluster]);

const localDestination = z.strictObject({
  name,
  kind: z.literal('local'),
  path: z.string().regex(/^\//, 'must be an absolute path'),
});

const cidr = z.string().regex(/^(\d{1,3}(\.\d{1,3}){3}\/\d{1,2}|[0-9a-fA-F:]+\/\d{1,3})$/, 'an IPv4 or IPv6 CIDR such as 203.0.113.0/24');

/** An S3-compatible object store (src/backup/s3-destination.ts). */
const s3Destination = z.strictObject({
  name,
  kind: z.literal('s3'),
  endpoint: z.url(),
  bucket: z.string().min(3).max(63),
  prefix: z.string().default(''),
  credentials: secretRef,
  egressCidrs: z
    .array(cidr)
    .min(1)
    .optional()
    .describe("Kubernetes: the address ranges of the store, when its endpoint is a DNS name. NetworkPolicy can't follow a name, and the backup job, which holds the master key, is never opened to every address."),
});

const destination = z.discriminatedUnion('kind', [localDestination, s3Destination]);

const region = z.strictObject({
  jurisdiction: z
    .string()
    .regex(/^[A-Z][A-Z0-9-]{1,15}$/, 'an uppercase jurisdiction label such as EU, US or UK')
    .optional()
    .describe('The legal jurisdiction the region\'s data stays in (e.g. EU, US). Required once more than one region is declared; residency report prints it.'),
  clusters: z.array(cluster).min(1, 'a region needs at least one PostgreSQL cluster'),
  backup: z
    .strictObject({
      destinations: z.array(destination).min(1, 'declare at least one backup destination'),
    })
    .optional(),
});

/** Where the data plane runs; a plain type (not z.infer) so result types that name it have a JSON Schema. */
export const INSTALL_TARGETS = ['embedded', 'compose', 'k8s'] as const;
export type InstallTarget = (typeof INSTALL_TARGETS)[number];

export const configSchema = z
  .strictObject({
    version: z.literal(1).describe('Schema version of this file.'),
    domain: hostname.describe('Public DNS name of the install; the HTTPS proxy serves it.'),
    target: z.enum(INSTALL_TARGETS).describe('Where the data plane runs.'),
    primaryRegion: name.describe('Region whose first cluster holds dforge_control.'),
    operatorRegion: name
      .optional()
      .describe('The region of the host dforge runs on; files it writes locally, such as audit exports and decrypted backups, count as being in this region. Default: primaryRegion.'),
    regions: z.record(name, region).refine((r) => Object.keys(r).length > 0, 'declare at least one region'),
    release: z
      .string()
      .regex(/^[0-9A-Za-z]([0-9A-Za-z._-]{0,61}[0-9A-Za-z])?$/, 'a release version such as 1.4.2 (it is also the default image tag and a Kubernetes label value)')
      .default('1.0.0')
      .describe('dForge release; images not set under images default to dforge/<service>:<release>. dforge upgrade --to changes it.'),
    images: z
      .strictObject({
        postgres: imageRef.optional(),
        authDb: imageRef.optional(),
        auth: imageRef.optional(),
        app: imageRef.optional(),
        proxy: imageRef.optional(),
        dforge: imageRef.optional().describe('The dforge CLI image the Kubernetes backup CronJob runs; default dforge/dforge:<release>.'),
      })
      .default({}),
    keys: z
      .strictObject({
        masterKeyProvider: z
          .enum(['file', 'env', 'passphrase', 'mounted'])
          .default('file')
          .describe('file: secrets/master/v<N>.key; env: DFORGE_MASTER_KEY; passphrase: DFORGE_MASTER_PASSPHRASE stretched with scrypt; mounted: v<N>.key files in keys.mountedKeyDir, which a key store outside dforge mounts.'),
        mountedKeyDir: z
          .string()
          .refine((p) => path.posix.isAbsolute(p) && path.posix.normalize(p) === p && p !== '/', 'an absolute, normalized path such as /var/run/dforge-kms')
          .optional()
          .describe('The mounted provider: the directory a CSI secrets-store driver, a Vault agent or a Secret volume (External Secrets) fills with v<N>.key files, each a base64 32-byte key, 0400. Read-only to dforge. On Kubernetes the jobs mount kubernetes.masterKeyVolume here.'),
        jwt: z
          .strictObject({
            algorithm: z.enum(['EdDSA', 'ES256']).default('EdDSA').describe('EdDSA is Ed25519.'),
            graceDays: z.number().int().min(0).max(365).default(7).describe('How long a replaced signing key still verifies tokens.'),
          })
          .default({algorithm: 'EdDSA', graceDays: 7}),
      })
      .default({masterKeyProvider: 'file', jwt: {algorithm: 'EdDSA', graceDays: 7}}),
    bundles: z
      .strictObject({
        trustedKeys: z.array(z.string().min(1)).default([]).describe('Ed25519 public keys (PEM files, paths relative to the install directory or absolute) that dforge bundle verify, load, push and install --bundle accept as bundle signers.'),
      })
      .optional(),
    compose: z
      .strictObject({
        project: name.default('dforge').describe('docker compose project name; it prefixes containers, networks and volumes.'),
        bindAddress: z.ipv4().default('0.0.0.0').describe('Host address the HTTPS proxy listens on.'),
        httpPort: port.default(80).describe('Host port that redirects to HTTPS.'),
        httpsPort: port.default(443),
        limits: z
          .partialRecord(
            z.enum(['postgres', 'auth-db', 'auth', 'app', 'proxy']),
            z.strictObject({
              memory: z
                .string()
                .regex(/^[1-9][0-9]*[mg]$/, 'a size in mebibytes or gibibytes, e.g. 512m or 2g')
                .optional()
                .describe('Memory limit of the container, e.g. 512m or 2g.'),
              cpus: z.number().positive().max(1024).optional().describe('CPUs the container may use, e.g. 0.5.'),
              pids: z.number().int().min(32).max(1_000_000).optional().describe('Most processes and threads the container may run.'),
            }),
          )
          .optional()
          .describe('Per-service resource limits of the compose stack; what is not set here takes the default sized for the minimum host preflight accepts.'),
      })
      .default({project: 'dforge', bindAddress: '0.0.0.0', httpPort: 80, httpsPort: 443}),
    kubernetes: z
      .strictObject({
        namespace: name.default('dforge'),
        ingressNamespace: name
          .default('ingress-nginx')
          .describe('Namespace of the Ingress controller: the NetworkPolicy admits its pods, and no other source, to the proxy.'),
        ingressClassName: name.optional(),
        storageClassName: name.optional(),
        postgresStorage: z
          .string()
          .regex(/^[1-9][0-9]{0,5}(Mi|Gi|Ti)$/, 'a size such as 20Gi')
          .default('20Gi')
          .describe('Size of the PostgreSQL volume claim.'),
        masterKeyVolume: z
          .record(z.string(), z.unknown())
          .refine((v) => Object.keys(v).length === 1 && !('name' in v), 'one volume source without a name, e.g. {csi: {driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: {secretProviderClass: dforge-master}}}')
          .optional()
          .describe('With keys.masterKeyProvider mounted: the volume source (csi, secret, ...) the backup and bootstrap jobs mount read-only at keys.mountedKeyDir, in place of the Secret dforge-master-key.'),
      })
      .default({namespace: 'dforge', ingressNamespace: 'ingress-nginx', postgresStorage: '20Gi'}),
    policy: z
      .strictObject({
        backups: z
          .strictObject({
            warnAfterHours: z.number().positive().max(8760).default(26).describe('posture WARNs (and a failed backup run records backup.stale) when a tenant\'s last good backup is older than this.'),
            failAfterHours: z.number().positive().max(8760).default(50).describe('posture FAILs when a tenant\'s last good backup is older than this.'),
            deepVerifyWithinDays: z.number().int().positive().max(366).default(7).describe('posture WARNs when no deep verify (dforge backup verify --all --deep) succeeded within this many days.'),
          })
          .default({warnAfterHours: 26, failAfterHours: 50, deepVerifyWithinDays: 7}),
        keys: z
          .strictObject({
            masterMaxAgeDays: z.number().int().positive().max(3650).default(365).describe('Rotation policy: posture WARNs when the active master key is older (dforge keys rotate --master).'),
            dataKeyMaxAgeDays: z.number().int().positive().max(3650).default(180).describe("Rotation policy for tenant data keys: posture WARNs when a tenant's active data key is older (no command rotates one yet)."),
            jwtMaxAgeDays: z.number().int().positive().max(3650).default(90).describe('Rotation policy for the JWT signing key (dforge keys rotate --jwt).'),
          })
          .default({masterMaxAgeDays: 365, dataKeyMaxAgeDays: 180, jwtMaxAgeDays: 90}),
      })
      .default({
        backups: {warnAfterHours: 26, failAfterHours: 50, deepVerifyWithinDays: 7},
        keys: {masterMaxAgeDays: 365, dataKeyMaxAgeDays: 180, jwtMaxAgeDays: 90},
      })
      .describe('What posture holds the install to: backup freshness and key rotation.'),
    tls: z
      .strictObject({
        mode: z.enum(['internal-ca', 'provided']).default('internal-ca').describe('internal-ca: dforge issues every certificate; provided: import the proxy certificate with dforge certs import.'),
        extraSans: z.array(hostname).default([]),
      })
      .default({mode: 'internal-ca', extraSans: []}),
  })
  .superRefine((config, ctx) => {
    if (!(config.primaryRegion in config.regions)) {
      ctx.addIssue({
        code: 'custom',
        path: ['primaryRegion'],
        message: `primaryRegion "${config.primaryRegion}" is not declared under regions (declared: ${Object.keys(config.regions).join(', ')})`,
      });
    }
    if (config.operatorRegion !== undefined && !(config.operatorRegion in config.regions)) {
      ctx.addIssue({
        code: 'custom',
        path: ['operatorRegion'],
        message: `operatorRegion "${config.operatorRegion}" is not declared under regions (declared: ${Object.keys(config.regions).join(', ')})`,
      });
    }
    if (config.keys.masterKeyProvider === 'mounted' && config.keys.mountedKeyDir === undefined) {
      ctx.addIssue({code: 'custom', path: ['keys', 'mountedKeyDir'], message: 'the mounted master key provider needs keys.mountedKeyDir: the absolute path where the key store is mounted, e.g. /var/run/dforge-kms'});
    }
    // Set for another provider they would do nothing, silently: refused like a misspelt key.
    if (config.keys.masterKeyProvider !== 'mounted') {
      if (config.keys.mountedKeyDir !== undefined) ctx.addIssue({code: 'custom', path: ['keys', 'mountedKeyDir'], message: `keys.mountedKeyDir is read by the mounted provider only, and keys.masterKeyProvider is "${config.keys.masterKeyProvider}"`});
      if (config.kubernetes.masterKeyVolume !== undefined) ctx.addIssue({code: 'custom', path: ['kubernetes', 'masterKeyVolume'], message: `kubernetes.masterKeyVolume is mounted for the mounted provider only, and keys.masterKeyProvider is "${config.keys.masterKeyProvider}": the jobs read the Secret dforge-master-key`});
    }
    if (config.keys.masterKeyProvider === 'mounted' && config.target === 'k8s' && config.kubernetes.masterKeyVolume === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['kubernetes', 'masterKeyVolume'],
        message: 'with the mounted master key provider and target k8s, set kubernetes.masterKeyVolume: the volume source the jobs mount at keys.mountedKeyDir, e.g. {csi: {driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: {secretProviderClass: dforge-master}}}',
      });
    }
    if (config.policy.backups.failAfterHours <= config.policy.backups.warnAfterHours) {
      ctx.addIssue({code: 'custom', path: ['policy', 'backups', 'failAfterHours'], message: `failAfterHours (${config.policy.backups.failAfterHours}) must be above warnAfterHours (${config.policy.backups.warnAfterHours})`});
    }
    const regionNames = Object.keys(config.regions);
    if (regionNames.length > 1) {
      for (const regionName of regionNames) {
        if (config.regions[regionName]!.jurisdiction === undefined) {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'jurisdiction'], message: `region ${regionName} needs a jurisdiction (e.g. EU, US) once more than one region is declared: residency report names it for every tenant`});
        }
      }
    }
    const clusterNames = new Map<string, string>();
    let bundledCount = 0;
    const destinationNames = new Map<string, string>();
    for (const [regionName, r] of Object.entries(config.regions)) {
      (r.backup?.destinations ?? []).forEach((d, i) => {
        const other = destinationNames.get(d.name);
        if (other !== undefined) {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'backup', 'destinations', i, 'name'], message: `destination name "${d.name}" is already used in region ${other}; destination names are unique across the install, so a backup names exactly one region`});
        }
        destinationNames.set(d.name, regionName);
      });
      r.clusters.forEach((c, i) => {
        const other = clusterNames.get(c.name);
        if (other !== undefined) {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'clusters', i, 'name'], message: `cluster name "${c.name}" is already used in region ${other}; cluster names are unique across the install`});
        }
        clusterNames.set(c.name, regionName);
        if (c.kind === 'bundled' && ++bundledCount > 1) {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'clusters', i, 'kind'], message: 'only one cluster can be "bundled": the stack runs one postgres service; declare further clusters as "external"'});
        }
        if (config.target === 'k8s' && c.kind === 'embedded') {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'clusters', i, 'kind'], message: 'an "embedded" cluster runs on the dforge host, which Kubernetes workloads cannot rely on; with target k8s use kind "bundled" or "external"'});
        }
        if (config.target === 'embedded' && c.kind === 'bundled') {
          ctx.addIssue({code: 'custom', path: ['regions', regionName, 'clusters', i, 'kind'], message: 'a "bundled" cluster needs target compose or k8s; with target embedded use kind "embedded" or "external"'});
        }
      });
    }
  });

export type DforgeConfig = z.infer<typeof configSchema>;
export type ClusterConfig = z.infer<typeof cluster>;
export type DestinationConfig = z.infer<typeof destination>;
export type RegionConfig = z.infer<typeof region>;

/** JSON Schema of `dforge.yaml` for editors (yaml-language-server) and CI linting. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(configSchema, {io: 'input', unrepresentable: 'any'}),
    $id: 'urn:dforge:schema:dforge.yaml:v1',
    title: 'dforge.yaml',
  };
}

/** The region files dforge writes on its own host are in (audit exports, decrypted backups): operatorRegion, else primaryRegion. */
export function operatorRegionOf(config: DforgeConfig): string {
  return config.operatorRegion ?? config.primaryRegion;
}
