import {describe, expect, it} from 'vitest';

import type {DforgeConfig} from '../../src/config/schema.js';
import {renderKubernetes} from '../../src/render/k8s.js';
import {K8S_EU, k8sConfig} from '../helpers/k8s-config.js';
import {objectId, parseManifests, podTemplates, type Container, type K8sObject, type PodTemplate} from '../helpers/k8s-objects.js';

/**
 * Outside judges, as data: the kube-score and Polaris rules dforge adopts, each written as a check
 * over every rendered object, failing with the rule's name. Neither tool is packaged for Debian or
 * npm, so their rules are re-implemented here from their documentation; where a rule is adapted,
 * the note says how. Not adopted yet: kube-score deployment-has-host-podantiaffinity (topology
 * spread instead).
 */
const config = (): DforgeConfig =>
  k8sConfig({
    regions: {
      eu: K8S_EU,
      us: {jurisdiction: 'US', clusters: [{name: 'us-1', kind: 'external', host: '192.0.2.10', admin: {secret: 'postgres/us-1-admin'}}], backup: {destinations: [{name: 'us-local', kind: 'local', path: '/var/backups/dforge/us'}]}},
    },
  });

/** What a probe checks (httpGet, tcpSocket, exec, grpc), without its timing. */
const probeHandler = (probe: unknown): unknown => {
  const {httpGet, tcpSocket, exec, grpc} = probe as Record<string, unknown>;
  return {httpGet, tcpSocket, exec, grpc};
};

type Ctx = {objects: K8sObject[]; template: PodTemplate; container: Container; init: boolean};
interface Rule {
  readonly tool: 'kube-score' | 'Polaris';
  readonly rule: string;
  readonly note?: string;
  /** Per container: the problem, or undefined. */
  readonly container?: (c: Ctx) => string | undefined;
  /** Per pod template. */
  readonly pod?: (objects: K8sObject[], t: PodTemplate) => string | undefined;
  /** Per object. */
  readonly object?: (objects: K8sObject[], o: K8sObject) => string | undefined;
}

const sc = (c: Container): Record<string, any> => (c.securityContext ?? {}) as Record<string, any>;
const podSc = (t: PodTemplate): Record<string, any> => (t.spec.securityContext ?? {}) as Record<string, any>;
const res = (c: Container, kind: 'requests' | 'limits', r: string): unknown => ((c.resources ?? {}) as Record<string, Record<string, unknown> | undefined>)[kind]?.[r];
const longRunning = (t: PodTemplate): boolean => !/^(CronJob|Job)\//.test(t.owner);
const matches = (selector: Record<string, string> | undefined, labels: Record<string, string>): boolean => Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v);
const policiesFor = (objects: K8sObject[], t: PodTemplate): Array<Record<string, any>> =>
  objects.filter((o) => o.kind === 'NetworkPolicy' && matches((o.spec as any).podSelector.matchLabels, t.metadata.labels ?? {})).map((o) => o.spec as Record<string, any>);

const RULES: Rule[] = [
  {tool: 'kube-score', rule: 'container-resources', container: ({container: c}) => (['requests', 'limits'] as const).flatMap((k) => ['cpu', 'memory'].filter((r) => res(c, k, r) === undefined).map((r) => `${k}.${r}`)).join(', ') || undefined},
  {tool: 'kube-score', rule: 'container-ephemeral-storage-request-and-limit', container: ({container: c}) => (res(c, 'requests', 'ephemeral-storage') === undefined || res(c, 'limits', 'ephemeral-storage') === undefined ? 'no ephemeral-storage request or limit' : undefined)},
  {tool: 'kube-score', rule: 'container-image-pull-policy', note: 'adapted: set explicitly (IfNotPresent, images are pinned), where kube-score wants Always', container: ({container: c}) => (c.imagePullPolicy === undefined ? 'imagePullPolicy unset' : undefined)},
  {tool: 'kube-score', rule: 'container-image-tag', container: ({container: c}) => (/(:latest$)|^[^:@]+$/.test(c.image) ? `image ${c.image} has no tag or digest, or :latest` : undefined)},
  {tool: 'kube-score', rule: 'container-security-context-user-group-id', note: 'adapted: a non-root uid and gid (the images run as 101, 999, 10001), where kube-score wants > 10000', container: ({template: t, container: c}) => {
    const uid = sc(c).runAsUser ?? podSc(t).runAsUser;
    const gid = sc(c).runAsGroup ?? podSc(t).runAsGroup;
    return typeof uid !== 'number' || uid === 0 || typeof gid !== 'number' || gid === 0 ? `runAsUser ${uid}, runAsGroup ${gid}` : undefined;
  }},
  {tool: 'kube-score', rule: 'container-security-context-privileged', container: ({container: c}) => (sc(c).privileged === true ? 'privileged' : undefined)},
  {tool: 'kube-score', rule: 'container-security-context-readonlyrootfilesystem', container: ({container: c}) => (sc(c).readOnlyRootFilesystem === true ? undefined : 'root filesystem writable')},
  {tool: 'kube-score', rule: 'pod-probes', note: 'readiness and liveness both present on long-running pods, and not the same check', container: ({template: t, container: c, init}) => (!init && longRunning(t) ? (!c.readinessProbe || !c.livenessProbe ? 'readiness or liveness probe missing' : JSON.stringify(probeHandler(c.readinessProbe)) === JSON.stringify(probeHandler(c.livenessProbe)) ? 'readiness and liveness probe the same handler' : undefined) : undefined)},
  {tool: 'kube-score', rule: 'pod-networkpolicy', pod: (objects, t) => {
    const policies = policiesFor(objects, t);
    const types = new Set(policies.flatMap((p) => p.policyTypes as string[]));
    return types.has('Ingress') && types.has('Egress') ? undefined : 'no NetworkPolicy for both ingress and egress';
  }},
  {tool: 'kube-score', rule: 'networkpolicy-targets-pod', object: (objects, o) => {
    if (o.kind !== 'NetworkPolicy') return undefined;
    const selector = (o.spec as any).podSelector.matchLabels as Record<string, string> | undefined;
    return podTemplates(objects).some((t) => matches(selector, t.metadata.labels ?? {})) ? undefined : 'selects no pod';
  }},
  {tool: 'kube-score', rule: 'deployment-has-poddisruptionbudget', object: (objects, o) => {
    if (o.kind !== 'Deployment' || ((o.spec as any).replicas ?? 1) < 2) return undefined;
    const labels = (o.spec as any).template.metadata.labels as Record<string, string>;
    return objects.some((b) => b.kind === 'PodDisruptionBudget' && matches((b.spec as any).selector.matchLabels, labels)) ? undefined : 'no PodDisruptionBudget selects its pods';
  }},
  {tool: 'Polaris', rule: 'topologySpreadConstraint', object: (_objects, o) => (o.kind === 'Deployment' && ((o.spec as any).replicas ?? 1) >= 2 && !((o.spec as any).template.spec.topologySpreadConstraints?.length > 0) ? 'replicas without topologySpreadConstraints' : undefined)},
  {tool: 'Polaris', rule: 'missingServiceAccount', note: 'adapted: every pod names its own ServiceAccount, which exists and mounts no token', pod: (objects, t) => {
    const name = t.spec.serviceAccountName as string | undefined;
    const account = objects.find((o) => o.kind === 'ServiceAccount' && o.metadata.name === name) as (K8sObject & {automountServiceAccountToken?: boolean}) | undefined;
    const shared = podTemplates(objects).filter((x) => x.spec.serviceAccountName === name).length > 1;
    return !account || account.automountServiceAccountToken !== false || shared ? `serviceAccountName ${name}: missing, shared or mounting a token` : undefined;
  }},
  {tool: 'kube-score', rule: 'statefulset-has-servicename', object: (objects, o) => (o.kind === 'StatefulSet' && !objects.some((s) => s.kind === 'Service' && s.metadata.name === (o.spec as any).serviceName) ? 'serviceName names no Service' : undefined)},
  {tool: 'Polaris', rule: 'runAsRootAllowed', container: ({template: t, container: c}) => ((sc(c).runAsNonRoot ?? podSc(t).runAsNonRoot) === true ? undefined : 'runAsNonRoot not true')},
  {tool: 'Polaris', rule: 'privilegeEscalationAllowed', container: ({container: c}) => (sc(c).allowPrivilegeEscalation === false ? undefined : 'allowPrivilegeEscalation not false')},
  {tool: 'Polaris', rule: 'insecureCapabilities', container: ({container: c}) => ((sc(c).capabilities?.drop ?? []).includes('ALL') && (sc(c).capabilities?.add ?? []).length === 0 ? undefined : 'capabilities not dropped to none')},
  {tool: 'Polaris', rule: 'hostNetworkSet', pod: (_o, t) => (t.spec.hostNetwork ? 'hostNetwork' : undefined)},
  {tool: 'Polaris', rule: 'hostPIDSet', pod: (_o, t) => (t.spec.hostPID ? 'hostPID' : undefined)},
  {tool: 'Polaris', rule: 'hostIPCSet', pod: (_o, t) => (t.spec.hostIPC ? 'hostIPC' : undefined)},
  {tool: 'Polaris', rule: 'automountServiceAccountToken', pod: (_o, t) => (t.spec.automountServiceAccountToken === false ? undefined : 'the service account token is mounted')},
  {tool: 'Polaris', rule: 'readinessProbeMissing', container: ({template: t, container: c, init}) => (!init && longRunning(t) && !c.readinessProbe ? 'no readinessProbe' : undefined)},
  {tool: 'Polaris', rule: 'livenessProbeMissing', container: ({template: t, container: c, init}) => (!init && longRunning(t) && !c.livenessProbe ? 'no livenessProbe' : undefined)},
  {tool: 'Polaris', rule: 'pullPolicyNotAlways', note: 'adapted as container-image-pull-policy above: set, not necessarily Always', container: ({container: c}) => (['Always', 'IfNotPresent', 'Never'].includes(c.imagePullPolicy as string) ? undefined : 'imagePullPolicy unset')},
  {tool: 'Polaris', rule: 'seccompProfile', pod: (_o, t) => (podSc(t).seccompProfile?.type === 'RuntimeDefault' ? undefined : 'no RuntimeDefault seccomp profile')},
];

describe('rendered manifests, judged by the kube-score and Polaris rules dforge adopts', async () => {
  const objects = (await renderKubernetes(config(), undefined)).flatMap((f) => (f.path === 'kustomization.yaml' ? [] : parseManifests(f.content)));
  const templates = podTemplates(objects);

  it('renders pods to judge', () => {
    expect(templates.length).toBeGreaterThanOrEqual(6);
  });

  it.each(RULES.map((r) => [`${r.tool} ${r.rule}`, r] as const))('%s', (_name, rule) => {
    const problems: string[] = [];
    for (const o of objects) {
      const p = rule.object?.(objects, o);
      if (p) problems.push(`${objectId(o)}: ${p}`);
    }
    for (const t of templates) {
      const p = rule.pod?.(objects, t);
      if (p) problems.push(`${t.owner}: ${p}`);
      for (const [init, list] of [[false, t.spec.containers], [true, t.spec.initContainers ?? []]] as const) {
        for (const c of list) {
          const cp = rule.container?.({objects, template: t, container: c, init});
          if (cp) problems.push(`${t.owner} ${c.name}: ${cp}`);
        }
      }
    }
    expect(problems, `${rule.tool} ${rule.rule}`).toEqual([]);
  });
});
