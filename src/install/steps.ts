import {backupSchedule} from '../backup/manage.js';
import {configText, layOutWithConfig} from '../config/init.js';
import type {DforgeConfig} from '../config/schema.js';
import {CheckFailedError, UsageError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import {configFromAnswers, openQuestions, withDefaults, type Answers} from './answers.js';
import {composeInstallSteps} from './compose-steps.js';
import {installConfig, type InstallContext, type InstallOptions, type InstallResult} from './context.js';
import {keyAndPkiSteps} from './key-steps.js';

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
        const report = await runPreflight({dir, config: installConfig(ctx), target: installConfig(ctx).target, ignore: options.ignore});
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
        const r = await layOutWithConfig(dir, configText(installConfig(ctx)), 'dforge install');
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
