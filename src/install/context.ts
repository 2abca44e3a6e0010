import type {VerifiedBundle} from '../bundle/verified-bundle.js';
import type {DforgeConfig, InstallTarget} from '../config/schema.js';
import type {PreflightReport} from '../preflight/service.js';
import type {WriteResult} from '../render/rendered-file.js';
import type {ImageService} from '../render/values.js';
import type {ComposeStack, ServiceState} from '../runtime/compose-stack.js';
import type {TlsProbe} from '../runtime/tls-probe.js';
import type {PartialAnswers, Question} from './answers.js';
import type {InstalledBundle} from './bundle.js';
import type {StackCredentials} from './compose-runtime.js';

/**
 * What every install step shares, whatever the target: the options of the run, the context the
 * steps fill in as they go, and the result `dforge install --json` prints.
 */

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
  /** compose: each service's image by its immutable reference (digest or image id), once the engine has it. */
  pinnedImages?: Record<ImageService, string>;
}

export const newInstallContext = (): InstallContext => ({secretsCreated: [], changedServices: new Set(), restarted: [], services: [], tls: []});


/** The config the Answers step decided; every later step runs after it. */
export const installConfig = (ctx: InstallContext): DforgeConfig => ctx.config!;
