import {promises as fs} from 'node:fs';
import path from 'node:path';

import type Docker from 'dockerode';

import {serviceHost} from '../certs/service-names.js';
import {backupSchedule} from '../backup/manage.js';
import type {VerifiedBundle} from '../bundle/verified-bundle.js';
import {configText, layOutWithConfig} from '../config/init.js';
import type {DforgeConfig, InstallTarget} from '../config/schema.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE, bootstrapCluster} from '../control/bootstrap.js';
import {caCertFile} from '../certs/pki-paths.js';
import {endpointOf} from '../control/clusters.js';
import {usingControlPlane} from '../control/plane.js';
import {CheckFailedError, UsageError, UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import {connect, connectOverSocket} from '../postgres/connect.js';
import {EMBEDDED_SUPERUSER} from '../postgres/embedded-install.js';
import type {PreflightReport} from '../preflight/service.js';
import {COMPOSE_FILE, renderCompose} from '../render/compose.js';
import {writeRendered, type WriteResult} from '../render/rendered-file.js';
import {bundledCluster, resolvedImages} from '../render/values.js';
import {ComposeStack, STACK_SERVICES, type ServiceState} from '../runtime/compose-stack.js';
import {publishTenantCatalog} from '../runtime/tenant-catalog.js';
import {probeTls, type TlsProbe} from '../runtime/tls-probe.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import {keyAndPkiSteps} from './key-steps.js';
import {configFromAnswers, openQuestions, withDefaults, type Answers, type PartialAnswers, type Question} from './answers.js';
import {ensureAuthDatabase} from './auth-db.js';
import {loadBundleImages, type InstalledBundle} from './bundle.js';
import {authDbSocketDir, clearPendingRestarts, pendingRestarts, ensureStackCredentials, postgresSocketDir, writeComposeRuntime, type StackCredentials} from './compose-runtime.js';

export interface InstallOptions {
  /** Answers from flags and the answers file; flags already take precedence. */
  readonly provided: PartialAnswers;
  /** Asks the open questions on a terminal; undefined when nobody can answer (no TTY, --yes). */
  readonly ask?: (questions: Question[], known: PartialAnswers) => Promise<PartialAnswers>;
  /** --yes: open questions take their defaults without asking. */
  readonly acceptDefaults?: boolean;
  /** Preflight checks the operator waives. */
  readonly ignore: readonly string[];
  readonly healthTimeoutMs?: number;
  /** --bundle: verified before anything changed; images come from it. */
  readonly bundle?: VerifiedBundle;
  /** Progress of loading images from the bundle, for stderr. */
  readonly loadProgress?: (done: number, total: number) => void;
}

export interface InstallResult {
  readonly target: InstallTarget;
  readonly dir: string;
  readonly configFile: string;
  readonly createdConfig: boolean;
  readonly caFingerprint: string;
  readonly url: string;
  /** Sealed secrets this run created; empty on a re-run. */
  readonly secretsCreated: string[];
  readonly rendered: WriteResult;
  /** Services restarted because files they mount changed. */
  readonly restarted: string[];
  readonly services: ServiceState[];
  readonly tls: TlsProbe[];
  readonly preflight: {failed: string[]; warned: string[]; waived: string[]};
  readonly backupCronLine: string;
  /** k8s only: whether the manifests were applied; false means rendered only, no cluster was reachable. */
  readonly applied?: boolean;
  /** The offline bundle the images came from (install --bundle). */
  readonly bundle?: InstalledBundle;
}

export interface InstallContext {
  config?: DforgeConfig;
  createdConfig?: boolean;
  preflight?: PreflightReport;
  caFingerprint?: string;
  secretsCreated: string[];
  changedServices: Set<string>;
  rendered?: WriteResult;
  restarted: string[];
  services: ServiceState[];
  tls: TlsProbe[];
  stack?: ComposeStack;
  credentials?: StackCredentials;
  /** k8s: whether kubectl applied the overlay (false: no cluster reachable, stopped after rendering). */
  applied?: boolean;
  bundle?: InstalledBundle;
}

const DEFAULT_HEALTH_TIMEOUT_MS = 5 * 60_000;

export const newInstallContext = (): InstallContext => ({secretsCreated: [], changedServices: new Set(), restarted: [], services: [], tls: []});

const need = (ctx: InstallContext): DforgeConfig => ctx.config!;

/**
 * `dforge install`, as steps. These come first for every target: answers → preflight → config →
 * keys → PKI; the target's own steps follow. Every step converges on the desired state, so
 * running install again reconciles: secrets are kept, changed files are re-rendered, and only
 * services whose configuration changed are recreated or restarted.
 */
export function commonInstallSteps(dir: InstallDir, options: InstallOptions): Array<Step<InstallContext>> {
  return [
    {
      title: 'Answers',
      async run(ctx) {
        ctx.config = await decideConfig(dir, options);
        return `${ctx.config.target} install of ${ctx.config.domain}`;
      },
    },
    {
      title: 'Preflight',
      async run(ctx) {
        const {runPreflight} = await import('../preflight/service.js');
        const report = await runPreflight({dir, config: need(ctx), target: need(ctx).target, ignore: options.ignore});
        ctx.preflight = report;
        if (report.failed.length > 0) {
          const failed = report.checks.filter((c) => c.status === 'fail');
          throw new CheckFailedError(`preflight failed: ${failed.map((c) => c.id).join(', ')}`, {
            nextSteps: [...failed.map((c) => `${c.id}: ${c.detail}${c.remedy ? ` → ${c.remedy}` : ''}`), 'Fix these, or waive one with --ignore <check id> (recorded in the ops log).'],
            data: {checks: failed},
          });
        }
        return `${report.checks.length} checks, ${report.warned.length} warning(s)${report.waived.length > 0 ? `, waived: ${report.waived.join(', ')}` : ''}`;
      },
    },
    {
      title: 'Config',
      async run(ctx) {
        const r = await layOutWithConfig(dir, configText(need(ctx)), 'dforge install');
        ctx.createdConfig = r.createdConfig;
        return r.createdConfig ? `wrote ${r.configFile}` : `kept ${r.configFile}`;
      },
    },
    ...keyAndPkiSteps<InstallContext>(dir, 'dforge install', (ctx, fingerprint) => (ctx.caFingerprint = fingerprint)),
  ];
}

/** The steps of the target the answers chose. */
export async function targetInstallSteps(dir: InstallDir, options: InstallOptions, target: DforgeConfig['target']): Promise<Array<Step<InstallContext>>> {
  if (target === 'k8s') return (await import('./k8s.js')).k8sInstallSteps(dir);
  return composeInstallSteps(dir, options);
}

/** The compose target: secrets → images → render → start → health → bootstrap → tenants → TLS. */
export function composeInstallSteps(dir: InstallDir, options: InstallOptions): Array<Step<InstallContext>> {
  let docker: Docker | undefined;
  const engine = async (): Promise<Docker> => {
    if (!docker) docker = await (await import('../docker/engine.js')).connectDockerEngine();
    return docker;
  };
  return [
    {
      title: 'Secrets',
      async run(ctx) {
        const keys = await openKeyServices(dir);
        const credentials = await ensureStackCredentials(keys, need(ctx));
        ctx.secretsCreated.push(...credentials.created);
        ctx.credentials = credentials;
        await writeComposeRuntime(dir, keys, credentials);
        // This run's changes and whatever an interrupted run left pending.
        ctx.changedServices = new Set(await pendingRestarts(dir));
        return `${credentials.created.length} created, ${ctx.changedServices.size} service(s) with changed files`;
      },
    },
    {
      title: 'Images',
      async run(ctx) {
        if (options.bundle) {
          ctx.bundle = await loadBundleImages(await engine(), options.bundle, Object.values(resolvedImages(need(ctx))), options.loadProgress);
          return `from the bundle of release ${ctx.bundle.release}: ${ctx.bundle.loaded.length === 0 ? 'all present' : `loaded ${ctx.bundle.loaded.join(', ')}`}`;
        }
        const missing: string[] = [];
        const {imagePresent} = await import('../docker/images.js');
        for (const ref of new Set(Object.values(resolvedImages(need(ctx))))) if (!(await imagePresent(await engine(), ref))) missing.push(ref);
        if (missing.length > 0) {
          throw new UserError(`images not in the local engine: ${missing.join(', ')}`, {
            nextSteps: ['Pull them from your registry (docker pull <image>), or load their archives (docker load -i <file>), then re-run dforge install.'],
          });
        }
        return 'all present';
      },
    },
    {
      title: 'Render',
      async run(ctx) {
        const files = await renderCompose(need(ctx), path.join(dir.root, 'templates'));
        ctx.rendered = await writeRendered(composeDir(dir), files);
        return `${ctx.rendered.written.length} written, ${ctx.rendered.unchanged.length} unchanged`;
      },
    },
    {
      title: 'Start',
      async run(ctx) {
        const {detectComposeCli} = await import('../runtime/compose-cli.js');
        const stack = new ComposeStack({cli: await detectComposeCli(), composeFile: path.join(composeDir(dir), COMPOSE_FILE), project: need(ctx).compose.project, docker: await engine()});
        ctx.stack = stack;
        const before = new Map((await stack.services()).map((s) => [s.service, s.containerId]));
        await stack.up();
        const after = await stack.services();
        // A container that up just created already read the new files; a kept one must restart to.
        ctx.restarted = after.filter((s) => ctx.changedServices.has(s.service) && before.get(s.service) === s.containerId).map((s) => s.service);
        await stack.restart(ctx.restarted);
        await clearPendingRestarts(dir);
        const recreated = after.filter((s) => before.get(s.service) !== s.containerId).map((s) => s.service);
        return `${recreated.length > 0 ? `created ${recreated.join(', ')}` : 'no container recreated'}${ctx.restarted.length > 0 ? `; restarted ${ctx.restarted.join(', ')}` : ''}`;
      },
    },
    {
      title: 'Health',
      async run(ctx) {
        ctx.services = await ctx.stack!.waitHealthy(STACK_SERVICES, options.healthTimeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS);
        return `${ctx.services.length} services healthy`;
      },
    },
    {
      title: 'Bootstrap',
      async run(ctx) {
        const config = need(ctx);
        const credentials = ctx.credentials!;
        const cluster = bundledCluster(config).name;
        const endpoint = await endpointOf(dir, config, cluster);
        const admin = await connectOverSocket(postgresSocketDir(dir), 5432, {user: EMBEDDED_SUPERUSER, password: credentials.superuser, database: 'postgres'});
        try {
          await bootstrapCluster(admin, {
            provisionerPassword: credentials.provisioner,
            withControlDatabase: true,
            connectAsProvisioner: (database) => connect(endpoint, {user: PROVISIONER_ROLE, password: credentials.provisioner, database}),
            connectAsAdmin: (database) => connectOverSocket(postgresSocketDir(dir), 5432, {user: EMBEDDED_SUPERUSER, password: credentials.superuser, database}),
          });
        } finally {
          await admin.end().catch(() => undefined);
        }
        const authAdmin = await connectOverSocket(authDbSocketDir(dir), 5432, {user: EMBEDDED_SUPERUSER, password: credentials.authDbSuperuser, database: 'postgres'});
        try {
          await ensureAuthDatabase(authAdmin, credentials.authDb);
        } finally {
          await authAdmin.end().catch(() => undefined);
        }
        return `${CONTROL_DATABASE} on ${cluster}, identities on auth-db`;
      },
    },
    {
      title: 'Tenants',
      async run(ctx) {
        // A first install waives checks before any ops log exists: they go on the record now.
        const report = ctx.preflight;
        if (report && report.waived.length > 0 && !report.waiversLogged) {
          const {logWaivers} = await import('../preflight/service.js');
          await logWaivers(dir, report.checks.filter((c) => c.status === 'waived'), report.target, new Date());
        }
        const published = await usingControlPlane(dir, (plane) => publishTenantCatalog(plane));
        return `${published.tenants} tenant(s) published to the app`;
      },
    },
    {
      title: 'TLS',
      async run(ctx) {
        const config = need(ctx);
        const caPem = await fs.readFile(caCertFile(dir), 'utf8');
        const host = config.compose.bindAddress === '0.0.0.0' ? '127.0.0.1' : config.compose.bindAddress;
        ctx.tls = [
          await probeTls({host, port: config.compose.httpsPort, servername: config.domain, caPem, protocol: 'tls'}),
          await probeTls({host: '127.0.0.1', port: bundledCluster(config).port, servername: serviceHost(config, 'postgres'), caPem, protocol: 'postgres'}),
        ];
        const bad = ctx.tls.filter((t) => !t.tls13 || !t.tls12Refused);
        if (bad.length > 0) {
          throw new UserError(`TLS is not 1.3-only on ${bad.map((t) => `${t.endpoint} (${t.detail})`).join('; ')}`, {
            nextSteps: ['Check the rendered nginx.conf / postgresql.conf and any local template overrides, then re-run dforge install.'],
          });
        }
        return ctx.tls.map((t) => `${t.endpoint} TLS 1.3 only`).join(', ');
      },
    },
  ];
}

export const composeDir = (dir: InstallDir): string => path.join(dir.renderedDir, 'compose');

export async function installResult(dir: InstallDir, ctx: InstallContext): Promise<InstallResult> {
  const config = ctx.config!;
  // On Kubernetes the rendered CronJob runs the backups; on one host, cron does.
  const cronLine =
    config.target === 'k8s'
      ? `CronJob dforge-backup in namespace ${config.kubernetes.namespace} (17 2 * * *)`
      : Object.values((await backupSchedule(dir, {kind: 'cron', at: '02:17', install: false})).files)[0]!.trimEnd().split('\n').at(-1)!;
  const port = config.target === 'compose' ? config.compose.httpsPort : 443;
  return {
    target: config.target,
    dir: dir.root,
    configFile: dir.configFile,
    createdConfig: ctx.createdConfig ?? false,
    caFingerprint: ctx.caFingerprint ?? '',
    url: `https://${config.domain}${port === 443 ? '' : `:${port}`}/`,
    secretsCreated: ctx.secretsCreated,
    rendered: ctx.rendered ?? {written: [], unchanged: [], removed: []},
    restarted: ctx.restarted,
    services: ctx.services,
    tls: ctx.tls,
    preflight: {failed: ctx.preflight?.failed ?? [], warned: ctx.preflight?.warned ?? [], waived: ctx.preflight?.waived ?? []},
    backupCronLine: cronLine,
    ...(config.target === 'k8s' ? {applied: ctx.applied ?? false} : {}),
    ...(ctx.bundle ? {bundle: ctx.bundle} : {}),
  };
}

/**
 * The config this run installs. With a dforge.yaml present it is the source of truth (edit it to
 * change the install); answers that contradict it are refused rather than silently ignored.
 */
async function decideConfig(dir: InstallDir, options: InstallOptions): Promise<DforgeConfig> {
  const {loadOptionalConfig} = await import('../preflight/service.js');
  const existing = await loadOptionalConfig(dir);
  if (existing?.target === 'embedded') {
    throw new UsageError(`${dir.configFile} is an embedded install`, {nextSteps: ['Embedded installs are set up with dforge quickstart / dforge db init; dforge install handles compose and k8s.']});
  }
  if (existing) {
    const current = answersOf(existing);
    const conflicts = (Object.keys(options.provided) as Array<keyof Answers>).filter((k) =>
      k === 'images'
        ? Object.entries(options.provided.images ?? {}).some(([service, ref]) => current.images[service as keyof Answers['images']] !== ref)
        : options.provided[k] !== current[k],
    );
    if (conflicts.length > 0) {
      throw new UsageError(`${dir.configFile} already exists and says otherwise for: ${conflicts.join(', ')}`, {
        nextSteps: ['dforge.yaml is the source of truth once written: edit it and re-run dforge install, or drop the conflicting answers.'],
      });
    }
    return existing;
  }
  let known = options.provided;
  const open = openQuestions(known);
  if (options.ask && open.length > 0) known = {...known, ...(await options.ask(open, known))};
  else if (!options.acceptDefaults && open.some((q) => q.default)) {
    // Off a terminal nobody confirms a default: taking them is the operator's explicit choice (--yes).
    throw new UsageError(`unanswered: ${open.map((q) => `${q.key} (${q.flag}${q.default ? `, default ${q.default(known, dir)}` : ', required'})`).join(', ')}`, {
      nextSteps: ['Pass the flags, or put the answers in a file for --config, or add --yes to take the defaults shown.'],
    });
  }
  return configFromAnswers(withDefaults(known, dir) as Answers);
}

/** The answers a config stands for: the inverse of configFromAnswers. */
function answersOf(config: DforgeConfig): Answers {
  const region = config.regions[config.primaryRegion]!;
  const cluster = region.clusters[0]!;
  const destination = region.backup?.destinations[0];
  return {
    target: config.target === 'embedded' ? 'compose' : config.target,
    domain: config.domain,
    region: config.primaryRegion,
    httpsPort: config.compose.httpsPort,
    httpPort: config.compose.httpPort,
    postgresPort: cluster.kind === 'bundled' ? cluster.port : 5432,
    backupDir: destination?.kind === 'local' ? destination.path : '',
    masterKeyProvider: config.keys.masterKeyProvider,
    release: config.release,
    project: config.compose.project,
    images: config.images,
  };
}
