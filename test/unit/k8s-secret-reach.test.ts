import {describe, expect, it} from 'vitest';

import type {DforgeConfig} from '../../src/config/schema.js';
import {kubernetesSecrets, MASTER_KEY_SECRET, renderKubernetes, renderKubernetesOverlay} from '../../src/render/k8s.js';
import {k8sConfig} from '../helpers/k8s-config.js';
import {parseManifests, podTemplates, type K8sObject, type PodTemplate} from '../helpers/k8s-objects.js';

/**
 * Which Secret keys each workload can read, from the rendered manifests and the overlay's patch
 * alone (volumes, projected sources, env and envFrom, init containers included), against a table
 * of what each one needs. A workload that gains a Secret fails here by name: the proxy and the app
 * never reach a superuser, the CA or JWT private key, or a job's archive; only the bootstrap Job
 * reaches the superusers; no workload reaches the install's CA key (no Secret carries it).
 */
const config = (): DforgeConfig => k8sConfig();

/** Every key of every Secret, as the overlay generates them; the master key's keys are the operator's (file provider: keyring and key files). */
const keysOf = (c: DforgeConfig): Map<string, readonly string[]> => new Map([...kubernetesSecrets(c).map((s) => [s.name, s.keys] as const), [MASTER_KEY_SECRET, ['*']]]);

function reach(template: PodTemplate, keys: Map<string, readonly string[]>): string[] {
  const out = new Set<string>();
  const add = (name: string, items?: Array<{key: string}>, key?: string): void => {
    for (const k of key ? [key] : items ? items.map((i) => i.key) : (keys.get(name) ?? ['?'])) out.add(`${name}/${k}`);
  };
  for (const v of (template.spec.volumes ?? []) as Array<Record<string, any>>) {
    if (v.secret) add(v.secret.secretName, v.secret.items);
    for (const source of v.projected?.sources ?? []) if (source.secret) add(source.secret.name, source.secret.items);
  }
  for (const c of [...template.spec.containers, ...(template.spec.initContainers ?? [])] as Array<Record<string, any>>) {
    for (const e of c.env ?? []) if (e.valueFrom?.secretKeyRef) add(e.valueFrom.secretKeyRef.name, undefined, e.valueFrom.secretKeyRef.key);
    for (const e of c.envFrom ?? []) if (e.secretRef) add(e.secretRef.name);
  }
  return [...out].sort();
}

const NEEDS: Record<string, string[]> = {
  // TLS ends at the Ingress (its tls.secretName), not in the proxy pod: it holds no secret at all.
  proxy: [],
  app: ['dforge-ca/ca.crt', 'dforge-catalog/catalog.json', 'dforge-jwks/jwks.json', 'dforge-tenant-acme/password'],
  auth: ['dforge-auth-db-password/password', 'dforge-ca/ca.crt', 'dforge-jwks/jwks.json', 'dforge-jwt-signing-key/jwt-signing-key.pem'],
  'auth-db': ['dforge-auth-db-superuser/password', 'dforge-ca/ca.crt', 'dforge-postgres-tls/tls.crt', 'dforge-postgres-tls/tls.key'],
  postgres: ['dforge-ca/ca.crt', 'dforge-postgres-superuser/password', 'dforge-postgres-tls/tls.crt', 'dforge-postgres-tls/tls.key'],
  backup: ['dforge-backup-install/install.tar', `${MASTER_KEY_SECRET}/*`],
  bootstrap: ['dforge-bootstrap-install/install.tar', `${MASTER_KEY_SECRET}/*`],
};

describe('Secrets per workload', () => {
  it('each workload reaches exactly the Secret keys it needs', async () => {
    const c = config();
    const objects: K8sObject[] = (await renderKubernetes(c, undefined)).flatMap((f) => (f.path === 'kustomization.yaml' ? [] : parseManifests(f.content)));
    // The overlay's patch replaces the app's tenants volume: apply it as kustomize would.
    const patch = parseManifests(renderKubernetesOverlay(c, {base: '../base', tenants: ['acme']}).find((f) => f.path === 'tenants.yaml')!.content)[0]!;
    const app = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'app')!;
    const appSpec = (app.spec as any).template.spec;
    const patched = (patch.spec as any).template.spec.volumes[0];
    appSpec.volumes = appSpec.volumes.map((v: {name: string}) => (v.name === patched.name ? patched : v));

    const keys = keysOf(c);
    const actual = Object.fromEntries(podTemplates(objects).map((t) => [t.metadata.labels!['app.kubernetes.io/name']!, reach(t, keys)]));
    expect(actual).toEqual(Object.fromEntries(Object.entries(NEEDS).map(([w, needs]) => [w, [...needs].sort()])));
    // The superusers: only the databases themselves and the bootstrap Job's archive.
    for (const [workload, reached] of Object.entries(actual)) {
      if (!['postgres', 'auth-db'].includes(workload)) expect(reached.filter((r) => r.includes('superuser')), workload).toEqual([]);
    }
  });
});
