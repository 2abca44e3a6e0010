import type {DforgeConfig} from '../config/schema.js';

/**
 * The names the stack's services go by inside the install, in one place: the install CA's name
 * constraints, the SANs of the leaves it issues, the compose network aliases and k8s Services that
 * make those names resolve, and every client that connects by them (the proxy, auth, the app's
 * tenant catalog, dforge itself) are all derived from here, so they cannot drift apart.
 *
 * A dNSName constraint permits the name and everything below it (RFC 5280 §4.2.1.10). So no
 * service goes by a bare name such as `app` (that would let the CA vouch for the whole `.app`
 * top-level domain), and Kubernetes names stay inside the install's own namespace.
 */

/**
 * The private suffix of compose and embedded installs. `.internal` is reserved for private use
 * and will never be delegated in the public DNS (ICANN, 2024), so no one outside can own a name
 * under it; `dforge.` keeps it apart from other private names on the same network.
 */
export const INTERNAL_SUFFIX = 'dforge.internal';

/** The services that have a name inside the stack. */
export type InternalService = 'postgres' | 'auth-db' | 'auth' | 'app';

const namespaceOf = (config: DforgeConfig): string => config.kubernetes.namespace;

/** Where the stack runs: the configured target, unless a caller renders for another one. */
type Target = DforgeConfig['target'];

/**
 * The name clients use for a service: a compose network alias, or in Kubernetes the Service in
 * the install's namespace. `<svc>.<ns>.svc` resolves through every pod's search list whatever the
 * cluster domain is.
 */
export function serviceHost(config: DforgeConfig, service: InternalService, target: Target = config.target): string {
  return target === 'k8s' ? `${service}.${namespaceOf(config)}.svc` : `${service}.${INTERNAL_SUFFIX}`;
}

/** Every name a service's certificate carries: the client name, and in Kubernetes also its fully qualified form. */
export function serviceNames(config: DforgeConfig, service: InternalService): string[] {
  const host = serviceHost(config, service);
  return config.target === 'k8s' ? [host, `${host}.cluster.local`] : [host];
}

/**
 * The DNS subtrees the CA permits besides the domain and tls.extraSans: the private suffix (or the
 * install's namespace), and `localhost`, which dforge uses for the loopback connections to its
 * own PostgreSQL and which RFC 6761 reserves, with every name below it, for loopback.
 */
export function internalSubtrees(config: DforgeConfig): string[] {
  const ns = namespaceOf(config);
  return config.target === 'k8s' ? [`${ns}.svc`, `${ns}.svc.cluster.local`, 'localhost'] : [INTERNAL_SUFFIX, 'localhost'];
}
