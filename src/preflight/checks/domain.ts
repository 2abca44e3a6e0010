import {promises as dns} from 'node:dns';

import type {CheckOutcome, PreflightCheck} from '../check.js';

const LOOKUP_TIMEOUT_MS = 5_000;

/** RFC 6761: localhost and its subdomains are loopback by definition, whatever DNS says. */
export function isLocalhostName(domain: string): boolean {
  return domain === 'localhost' || domain.endsWith('.localhost');
}

/** The domain the proxy serves must resolve, the way the operator's clients will resolve it. */
export function domainCheck(domain: string): PreflightCheck {
  return {
    id: 'domain.dns',
    title: 'Domain resolves',
    timeoutMs: LOOKUP_TIMEOUT_MS * 2,
    async run(): Promise<CheckOutcome> {
      if (isLocalhostName(domain)) return {status: 'pass', detail: `${domain} is a localhost name (loopback by definition)`};
      const remedy = `Add a DNS A/AAAA record for ${domain} pointing at this host (or the load balancer in front of it); for a trial, a line "<host IP> ${domain}" in /etc/hosts.`;
      // getaddrinfo, like the clients: /etc/hosts and nsswitch count, not only DNS servers.
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error('timeout'), {code: 'ETIMEOUT'})), LOOKUP_TIMEOUT_MS);
      });
      try {
        const addresses = await Promise.race([dns.lookup(domain, {all: true}), timeout]);
        return {status: 'pass', detail: `${domain} resolves to ${addresses.map((a) => a.address).join(', ')}`};
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        const why = code === 'ENOTFOUND' ? 'no such name' : code === 'ETIMEOUT' ? `no answer within ${LOOKUP_TIMEOUT_MS / 1000} s` : code;
        return {status: 'fail', detail: `${domain} does not resolve (${why})`, remedy};
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
