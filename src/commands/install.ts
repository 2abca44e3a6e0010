import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../cli/bundle-trust-flags.js';
import {UsageError} from '../errors.js';
import {readAnswersFile, type PartialAnswers} from '../install/answers.js';
import {answersWithBundle} from '../install/bundle.js';
import {withStackLock} from '../install/lifecycle.js';
import {newInstallContext, type InstallResult} from '../install/context.js';
import {commonInstallSteps, installResult, targetInstallSteps} from '../install/steps.js';
import {IMAGE_SERVICES} from '../render/values.js';
import {byteProgress} from '../ui/bytes.js';
import {askInstallQuestions, canPrompt} from '../ui/install-prompts.js';
import {runSteps} from '../ui/tasks.js';

export default class Install extends BaseCommand<typeof Install> {
  static override summary = 'Install dForge, or reconcile an existing install (like gitlab-ctl reconfigure).';
  static override description = `Steps: preflight → dforge.yaml → master key and JWT keys → PKI → sealed credentials → images → render → docker compose up → health → bootstrap dforge_control and the auth database → publish tenants to the app → TLS 1.3 handshake checks → summary with the CA fingerprint and the backup cron line.
On a terminal, missing answers are asked. Otherwise they come from flags, --config answers.yaml and DFORGE_* variables; an unanswered question is an error naming its flag, unless --yes takes its default.
Running it again changes only what differs: no secret is regenerated, changed files are re-rendered, and only services whose configuration changed are restarted.`;
  static override examples = [
    '<%= config.bin %> install',
    '<%= config.bin %> install --config answers.yaml --yes',
    '<%= config.bin %> install --domain erp.example.com --region eu --yes',
  ];

  static override flags = {
    config: Flags.file({summary: 'Answers file (YAML): target, domain, region, httpsPort, httpPort, postgresPort, backupDir, masterKeyProvider, release, images.', exists: true}),
    yes: Flags.boolean({char: 'y', summary: 'Ask nothing: take defaults for every open answer.'}),
    target: Flags.string({summary: 'compose (one host) or k8s.', options: ['compose', 'k8s'], env: 'DFORGE_TARGET'}),
    domain: Flags.string({summary: 'Public domain name.', env: 'DFORGE_DOMAIN'}),
    region: Flags.string({summary: 'Region name.', env: 'DFORGE_REGION'}),
    'https-port': Flags.integer({summary: 'HTTPS port of the proxy.', min: 1, max: 65_535}),
    'http-port': Flags.integer({summary: 'HTTP port (redirects to HTTPS).', min: 1, max: 65_535}),
    'postgres-port': Flags.integer({summary: 'Host port of PostgreSQL, on 127.0.0.1.', min: 1, max: 65_535}),
    'backup-dir': Flags.string({summary: 'Local backup directory.'}),
    'master-key-provider': Flags.string({summary: 'Where the master key lives.', options: ['file', 'env', 'passphrase']}),
    release: Flags.string({summary: 'dForge release (default image tag).', env: 'DFORGE_RELEASE'}),
    project: Flags.string({summary: 'docker compose project name.'}),
    image: Flags.string({summary: 'Image of one service: <service>=<ref>, e.g. app=registry.local/dforge/app:1.4.2.', multiple: true}),
    ignore: Flags.string({summary: 'Preflight check to waive (recorded in the ops log); repeat it or separate ids with commas.', multiple: true, delimiter: ','}),
    bundle: Flags.file({summary: 'Install from this signed offline bundle: verified first, its images loaded into the engine (its release becomes the install\'s).', exists: true}),
    registry: Flags.string({summary: 'With --target k8s and --bundle: the registry (HOST[:PORT]) the bundle was pushed to; images are pinned there by digest.', dependsOn: ['bundle']}),
    ...bundleTrustFlags,
  };

  async run(): Promise<InstallResult> {
    const dir = this.installDir();
    const fromFile = this.flags.config ? await readAnswersFile(this.flags.config) : {};
    // A bundle is verified before anything changes: a bad one stops here with exit 6 or 1.
    const bundle = this.flags.bundle === undefined ? undefined : (await checkBundleFromFlags(this.flags.bundle, this.flags, {installDir: dir, out: this.out})).verified;
    const flagged = {...fromFile, ...this.answersFromFlags(fromFile)};
    const provided = bundle ? answersWithBundle(flagged, bundle, this.flags.registry) : flagged;
    const prompting = !this.flags.yes && !this.jsonEnabled() && canPrompt();
    const options = {
      provided,
      ask: prompting ? (questions: Parameters<typeof askInstallQuestions>[1], known: PartialAnswers) => askInstallQuestions(dir, questions, known) : undefined,
      acceptDefaults: this.flags.yes,
      ignore: this.flags.ignore ?? [],
      bundle,
      loadProgress: byteProgress('load', (line) => this.out.progress(line)),
    };
    const ctx = newInstallContext();
    await withStackLock(dir, 'dforge install', async () => {
      await runSteps(commonInstallSteps(dir, options), ctx, this.out, {prompting});
      await runSteps(await targetInstallSteps(dir, options, ctx.config!.target), ctx, this.out);
    });
    const result = await installResult(dir, ctx);
    // A k8s install that could not apply or bootstrap has stopped with exit 4 and its next commands.
    if (!this.jsonEnabled()) {
      this.log(`dForge is up at     ${result.url}`);
      this.log(`CA fingerprint      ${result.caFingerprint}  (trust ${dir.root}/pki/ca.crt)`);
      for (const s of result.services) this.log(`service             ${s.service.padEnd(8)} ${s.state}, ${s.health}`);
      for (const t of result.tls) this.log(`TLS                 ${t.endpoint}: 1.3 accepted, 1.2 refused`);
      this.log(`secrets created     ${result.secretsCreated.length === 0 ? 'none (all kept)' : result.secretsCreated.join(', ')}`);
      this.log(`backups (cron)      ${result.backupCronLine}`);
      this.log(`                    install it with: dforge backup schedule --install`);
    }
    return result;
  }

  private answersFromFlags(fromFile: PartialAnswers): PartialAnswers {
    const f = this.flags;
    const images = {...fromFile.images};
    for (const spec of f.image ?? []) {
      const [service, ref] = spec.split(/=(.*)/s) as [string, string | undefined];
      if (!ref || !(IMAGE_SERVICES as readonly string[]).includes(service)) {
        throw new UsageError(`--image ${spec}: expected <service>=<image>, service one of ${IMAGE_SERVICES.join(', ')}`, {nextSteps: ['e.g. --image app=registry.local/dforge/app:1.4.2']});
      }
      images[service as (typeof IMAGE_SERVICES)[number]] = ref;
    }
    const entries: Array<[keyof PartialAnswers, unknown]> = [
      ['target', f.target],
      ['domain', f.domain],
      ['region', f.region],
      ['httpsPort', f['https-port']],
      ['httpPort', f['http-port']],
      ['postgresPort', f['postgres-port']],
      ['backupDir', f['backup-dir']],
      ['masterKeyProvider', f['master-key-provider']],
      ['release', f.release],
      ['project', f.project],
      ['images', (f.image ?? []).length > 0 ? images : undefined],
    ];
    return Object.fromEntries(entries.filter(([, v]) => v !== undefined)) as PartialAnswers;
  }
}
