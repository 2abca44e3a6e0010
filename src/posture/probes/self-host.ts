import {clustersOf} from '../../control/clusters.js';
import {defineCheck, manual, pass, runCheck, type CheckDefinition} from '../check.js';
import type {Probe} from '../context.js';

const CLUSTER_SELF_HOSTED = defineCheck({
  id: 'self-host.cluster-operated-here',
  title: 'PostgreSQL cluster is run by this install',
  area: 'self-host',
  controls: ['GDPR Art. 28'],
  severity: 'low',
  expected: 'embedded (this host) or bundled (this install\'s stack); an external cluster needs the operator\'s attestation',
  method: 'cluster kind in dforge.yaml; that it is up and answering is checked by the in-transit and runtime checks',
  fix: 'docs/security.md#bring-your-own-postgresql',
});

export const SELF_HOST_CHECKS: readonly CheckDefinition[] = [CLUSTER_SELF_HOSTED];

/** Where each cluster runs. An external one may be a cloud service, which only a person can vouch for. */
export const selfHostProbe: Probe = async (ctx) =>
  Promise.all(
    [...clustersOf(ctx.config)].map(([name, {cluster}]) =>
      runCheck(CLUSTER_SELF_HOSTED, `cluster:${name}`, async () =>
        cluster.kind === 'external'
          ? manual(`external cluster at ${cluster.host}:${cluster.port}: attest that you operate it (or have a processor agreement) and where it runs`, `external ${cluster.host}`)
          : pass(`${cluster.kind}: run by this ${ctx.config.target} install`),
      ),
    ),
  );
