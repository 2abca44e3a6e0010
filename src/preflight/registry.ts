import {clustersOf} from '../control/clusters.js';
import type {PreflightCheck, PreflightContext} from './check.js';
import {bundleSpaceCheck, bundleVerifiedCheck} from './checks/bundle.js';
import {certificatesCheck} from './checks/certs.js';
import {diskCheck, encryptionCheck} from './checks/disk.js';
import {domainCheck} from './checks/domain.js';
import {cpuCheck, memoryCheck, openFilesCheck, platformCheck, securityModulesCheck, timeSyncCheck} from './checks/host.js';
import {portsCheck} from './checks/ports.js';
import {externalPostgresCheck} from './checks/postgres.js';
import {composeCheck, dockerCheck, kubectlCheck, kubernetesCheck, postgresBinariesCheck} from './checks/runtime.js';

/**
 * The checks that apply to a run, in report order. Host checks apply where dforge runs the data
 * plane on this host (compose, embedded); for k8s this host only runs kubectl, and the cluster
 * sizes its own nodes. Config-dependent checks (domain, external clusters) need dforge.yaml.
 */
export function checksFor(ctx: PreflightContext): PreflightCheck[] {
  const onHost = ctx.target !== 'k8s';
  const checks: PreflightCheck[] = [];
  if (onHost) checks.push(platformCheck, cpuCheck, memoryCheck, diskCheck, encryptionCheck, portsCheck, timeSyncCheck, openFilesCheck, securityModulesCheck);
  if (ctx.target === 'compose') checks.push(dockerCheck, composeCheck);
  if (ctx.target === 'embedded') checks.push(postgresBinariesCheck);
  if (ctx.target === 'k8s') checks.push(kubectlCheck, kubernetesCheck);
  if (ctx.config) {
    checks.push(domainCheck(ctx.config.domain));
    for (const [name, {cluster}] of clustersOf(ctx.config)) if (cluster.kind === 'external') checks.push(externalPostgresCheck(ctx.config, name, cluster));
  }
  checks.push(certificatesCheck);
  if (ctx.bundle) checks.push(bundleVerifiedCheck, ...(ctx.target === 'k8s' ? [] : [bundleSpaceCheck]));
  return checks;
}
