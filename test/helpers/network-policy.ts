import type {K8sObject} from './k8s-objects.js';

/**
 * A small NetworkPolicy evaluator (networking.k8s.io/v1 semantics) for asserting the exact set of
 * flows a rendered namespace allows. A flow needs the sender's egress and the receiver's ingress;
 * a pod no policy selects for a direction is open in that direction, and endpoints outside the
 * rendered namespace (kube-dns, an Ingress controller, the internet) carry no policies of ours.
 */
export interface Endpoint {
  readonly name: string;
  /** Undefined for an address outside the cluster. */
  readonly namespace?: string;
  readonly namespaceLabels?: Readonly<Record<string, string>>;
  readonly labels?: Readonly<Record<string, string>>;
  readonly ip: string;
  /** Named container ports, for policies that name a port. */
  readonly namedPorts?: Readonly<Record<string, number>>;
}

export interface PortProbe {
  readonly port: number;
  readonly protocol: 'TCP' | 'UDP';
}

interface Selector {
  matchLabels?: Record<string, string>;
  matchExpressions?: unknown[];
}

interface Peer {
  podSelector?: Selector;
  namespaceSelector?: Selector;
  ipBlock?: {cidr: string; except?: string[]};
}

interface Rule {
  from?: Peer[];
  to?: Peer[];
  ports?: Array<{port?: number | string; endPort?: number; protocol?: string}>;
}

interface PolicySpec {
  podSelector: Selector;
  policyTypes?: string[];
  ingress?: Rule[];
  egress?: Rule[];
}

function selects(selector: Selector, labels: Readonly<Record<string, string>> | undefined): boolean {
  // Evaluating only half a selector would be a silently wrong answer.
  if (selector.matchExpressions?.length) throw new Error('matchExpressions are not modelled');
  if (labels === undefined) return false;
  return Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
}

function ipv4(ip: string): number | undefined {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return undefined;
  return parts.reduce((n, p) => n * 256 + p, 0);
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const a = ipv4(ip);
  const b = ipv4(base!);
  // An IPv6 block never holds the IPv4 endpoints modelled here.
  if (a === undefined || b === undefined) return false;
  const size = 2 ** (32 - Number(bits));
  return Math.floor(a / size) === Math.floor(b / size);
}

function peerMatches(peer: Peer, policyNamespace: string, endpoint: Endpoint): boolean {
  if (peer.ipBlock) return inCidr(endpoint.ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((c) => inCidr(endpoint.ip, c));
  if (endpoint.namespace === undefined) return false;
  const namespaceOk = peer.namespaceSelector ? selects(peer.namespaceSelector, endpoint.namespaceLabels) : endpoint.namespace === policyNamespace;
  const podOk = peer.podSelector ? selects(peer.podSelector, endpoint.labels) : true;
  return namespaceOk && podOk;
}

function portMatches(rule: Rule, probe: PortProbe, receiver: Endpoint): boolean {
  if (!rule.ports || rule.ports.length === 0) return true;
  return rule.ports.some((p) => {
    if ((p.protocol ?? 'TCP') !== probe.protocol) return false;
    if (p.port === undefined) return true;
    const port = typeof p.port === 'string' ? receiver.namedPorts?.[p.port] : p.port;
    if (port === undefined) return false;
    return p.endPort === undefined ? port === probe.port : probe.port >= port && probe.port <= p.endPort;
  });
}

function types(spec: PolicySpec): string[] {
  return spec.policyTypes ?? ['Ingress', ...(spec.egress ? ['Egress'] : [])];
}

function allowedBy(policies: readonly K8sObject[], direction: 'Ingress' | 'Egress', local: Endpoint, remote: Endpoint, probe: PortProbe, receiver: Endpoint): boolean {
  if (local.namespace === undefined) return true;
  const applicable = policies.filter((p) => {
    const spec = p.spec as PolicySpec;
    return p.metadata.namespace === local.namespace && selects(spec.podSelector, local.labels) && types(spec).includes(direction);
  });
  if (applicable.length === 0) return true;
  return applicable.some((p) => {
    const spec = p.spec as PolicySpec;
    const rules = (direction === 'Ingress' ? spec.ingress : spec.egress) ?? [];
    return rules.some((rule) => {
      const peers = direction === 'Ingress' ? rule.from : rule.to;
      const peerOk = !peers || peers.length === 0 || peers.some((peer) => peerMatches(peer, p.metadata.namespace!, remote));
      return peerOk && portMatches(rule, probe, receiver);
    });
  });
}

/** Every allowed flow into or out of the policies' namespace on the probed ports, as "from -> to:port/PROTO", sorted. */
export function allowedFlows(objects: readonly K8sObject[], endpoints: readonly Endpoint[], probes: readonly PortProbe[]): string[] {
  const policies = objects.filter((o) => o.kind === 'NetworkPolicy');
  const governed = new Set(policies.map((p) => p.metadata.namespace));
  const flows: string[] = [];
  for (const from of endpoints) {
    for (const to of endpoints) {
      // Flows between two endpoints outside the rendered namespace are not these policies' business.
      if (from === to || (!governed.has(from.namespace) && !governed.has(to.namespace))) continue;
      for (const probe of probes) {
        if (allowedBy(policies, 'Egress', from, to, probe, to) && allowedBy(policies, 'Ingress', to, from, probe, to)) {
          flows.push(`${from.name} -> ${to.name}:${probe.port}/${probe.protocol}`);
        }
      }
    }
  }
  return flows.sort();
}
