import {promises as fs} from 'node:fs';
import path from 'node:path';

import type Docker from 'dockerode';

import {caCertFile} from '../certs/pki-paths.js';
import {serviceHost} from '../certs/service-names.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE, bootstrapCluster} from '../control/bootstrap.js';
import {endpointOf} from '../control/clusters.js';
import {usingControlPlane} from '../control/plane.js';
import {UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import {connect, connectOverSocket} from '../postgres/connect.js';
import {EMBEDDED_SUPERUSER} from '../postgres/embedded-install.js';
import {COMPOSE_FILE, renderCompose} from '../render/compose.js';
import {writeRendered} from '../render/rendered-file.js';
import {bundledCluster, resolvedImages} from '../render/values.js';
import {ComposeStack, STACK_SERVICES} from '../runtime/compose-stack.js';
import {publishTenantCatalog} from '../runtime/tenant-catalog.js';
import {probeTls} from '../runtime/tls-probe.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import {ensureAuthDatabase} from './auth-db.js';
import {loadBundleImages} from './bundle.js';
import {authDbSocketDir, clearPendingRestarts, pendingRestarts, ensureStackCredentials, postgresSocketDir, writeComposeRuntime} from './compose-runtime.js';
import {installConfig, type InstallContext, type InstallOptions} from './context.js';
import {pinnedImages} from './image-pins.js';

const DEFAULT_HEALTH_TIMEOUT_MS = 5 * 60_000;

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
        const credentials = await ensureStackCredentials(keys, installConfig(ctx));
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
        const images = resolvedImages(installConfig(ctx));
        if (options.bundle) {
          ctx.bundle = await loadBundleImages(await engine(), options.bundle, Object.values(images), options.loadProgress);
          ctx.pinnedImages = await pinnedImages(await engine(), images);
          return `from the bundle of release ${ctx.bundle.release}: ${ctx.bundle.loaded.length === 0 ? 'all present' : `loaded ${ctx.bundle.loaded.join(', ')}`}; pinned by digest`;
        }
        const missing: string[] = [];
        const {imagePresent} = await import('../docker/images.js');
        for (const ref of new Set(Object.values(images))) if (!(await imagePresent(await engine(), ref))) missing.push(ref);
        if (missing.length > 0) {
          throw new UserError(`images not in the local engine: ${missing.join(', ')}`, {
            nextSteps: ['Pull them from your registry (docker pull <image>), or load their archives (docker load -i <file>), then re-run dforge install.'],
          });
        }
        ctx.pinnedImages = await pinnedImages(await engine(), images);
        return 'all present, pinned by digest';
      },
    },
    {
      title: 'Render',
      async run(ctx) {
        const files = await renderCompose(installConfig(ctx), path.join(dir.root, 'templates'), ctx.pinnedImages);
        ctx.rendered = await writeRendered(composeDir(dir), files);
        return `${ctx.rendered.written.length} written, ${ctx.rendered.unchanged.length} unchanged`;
      },
    },
    {
      title: 'Start',
      async run(ctx) {
        const {detectComposeCli} = await import('../runtime/compose-cli.js');
        const stack = new ComposeStack({cli: await detectComposeCli(), composeFile: path.join(composeDir(dir), COMPOSE_FILE), project: installConfig(ctx).compose.project, docker: await engine()});
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
        const config = installConfig(ctx);
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
        const config = installConfig(ctx);
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

