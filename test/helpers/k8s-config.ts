import {configSchema, type DforgeConfig} from '../../src/config/schema.js';

/** Region eu of the Kubernetes test installs: the bundled cluster and a local destination. */
export const K8S_EU = {jurisdiction: 'EU', clusters: [{name: 'eu-1', kind: 'bundled'}], backup: {destinations: [{name: 'eu-local', kind: 'local', path: '/var/backups/dforge/eu'}]}};

/** A Kubernetes dforge.yaml as written, before parsing: region eu (K8S_EU) in namespace dforge, top-level keys replaced by `patch`. */
export const k8sConfigInput = (patch: Record<string, unknown> = {}): Record<string, unknown> => ({
  version: 1,
  domain: 'dforge.example.com',
  target: 'k8s',
  primaryRegion: 'eu',
  release: '1.4.2',
  regions: {eu: K8S_EU},
  kubernetes: {namespace: 'dforge'},
  ...patch,
});

/** k8sConfigInput, parsed. */
export function k8sConfig(patch: Record<string, unknown> = {}): DforgeConfig {
  return configSchema.parse(k8sConfigInput(patch));
}
