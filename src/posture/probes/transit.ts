import {promises as fs} from 'node:fs';
import tls from 'node:tls';

import {caCertFile} from '../../certs/pki-paths.js';
import {clustersOf, endpointOf} from '../../control/clusters.js';
import {inspectCertificate} from '../../pki/inspect.js';
import {probeTls, type ProbeTarget, type TlsProbe} from '../../runtime/tls-probe.js';
import {defineCheck, fail, manual, pass, runCheck, skip, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import type {PostureContext, Probe} from '../context.js';

/**
 * Data in transit, measured by handshakes: every PostgreSQL cluster (after SSLRequest) and, for
 * compose installs, the HTTPS proxy must complete a verified TLS 1.3 handshake, refuse a TLS
 * 1.2-only ClientHello, and present an unexpired certificate that chains to the install CA.
 */

const TLS13 = defineCheck({
  id: 'in-transit.tls13',
  title: 'TLS 1.3 with a verified certificate chain and hostname',
  area: 'in-transit',
  controls: ['CIS PostgreSQL 6.8', 'GDPR Art. 32'],
  severity: 'critical',
  expected: 'a TLS 1.3 handshake completes, the chain verified against the install CA and the name checked',
  method: 'handshake pinned to TLS 1.3 (after SSLRequest for PostgreSQL) with the install CA as the only trust anchor',
  fix: 'dforge certs status; dforge certs renew (docs/security.md)',
});

const TLS12_REFUSED = defineCheck({
  id: 'in-transit.tls12-refused',
  title: 'Older TLS versions refused',
  area: 'in-transit',
  controls: ['CIS PostgreSQL 6.8', 'GDPR Art. 32'],
  severity: 'high',
  expected: 'a TLS 1.2-only ClientHello is refused with a protocol-version alert',
  method: 'handshake pinned to TLS 1.2 (after SSLRequest for PostgreSQL); only a protocol refusal counts',
  fix: 'PostgreSQL, as its superuser: ALTER SYSTEM RESET ssl_min_protocol_version; SELECT pg_reload_conf(). Proxy: dforge render, then dforge install (docs/security.md)',
});

const CERTIFICATE = defineCheck({
  id: 'in-transit.certificate',
  title: 'Served certificate valid and chained to the install CA',
  area: 'in-transit',
  controls: ['GDPR Art. 32'],
  severity: 'high',
  expected: 'the certificate served in the handshake chains to the install CA and has 30 days or more left',
  method: 'the peer certificate of the verified TLS 1.3 handshake, inspected against the install CA at the posture clock',
  fix: 'dforge certs renew',
});

export const TRANSIT_CHECKS: readonly CheckDefinition[] = [TLS13, TLS12_REFUSED, CERTIFICATE];

// A connection that never reached the TLS layer says nothing about the protocol: ERROR, not FAIL.
const UNREACHABLE = /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|timed out/;

function unreachable(probe: TlsProbe): boolean {
  return !probe.tls13 && !probe.tls12Refused && UNREACHABLE.test(probe.detail);
}

/** The three handshake-derived results of one endpoint, from one pair of handshakes. */
async function endpointResults(ctx: PostureContext, scope: string, target: () => Promise<ProbeTarget>): Promise<CheckResult[]> {
  const measured = (async () => {
    const t = await target();
    const probe = await ctx.limit(() => probeTls(t));
    if (unreachable(probe)) throw new Error(`cannot reach ${probe.endpoint}: ${probe.detail}`);
    return {target: t, probe};
  })();
  // Every check awaits the same measurement; mark it handled so a failure is reported once per check, not as unhandled.
  measured.catch(() => undefined);
  return Promise.all([
    runCheck(TLS13, scope, async (): Promise<Finding> => {
      const {probe} = await measured;
      return probe.tls13 ? pass(`TLS 1.3 negotiated at ${probe.endpoint}, chain and name verified`) : fail(`no verified TLS 1.3 handshake at ${probe.endpoint}`, probe.detail);
    }),
    runCheck(TLS12_REFUSED, scope, async (): Promise<Finding> => {
      const {probe} = await measured;
      if (probe.tls12Refused) return pass(`TLS 1.2 refused at ${probe.endpoint}`);
      // Inconclusive (no refusal, no handshake) is not a measurement: ERROR.
      if (!/a TLS 1\.2 handshake succeeded/.test(probe.detail)) throw new Error(`the TLS 1.2 attempt at ${probe.endpoint} was inconclusive: ${probe.detail}`);
      return fail(`TLS 1.2 handshake accepted at ${probe.endpoint}`, 'a client can negotiate down to TLS 1.2');
    }),
    runCheck(CERTIFICATE, scope, async (): Promise<Finding> => {
      const {target: t, probe} = await measured;
      if (!probe.certificatePem) return fail(`no certificate verified at ${probe.endpoint}`, probe.detail);
      const report = inspectCertificate(probe.certificatePem, {now: ctx.clock(), caPem: t.caPem});
      const what = `${report.subject}, expires ${report.notAfter} (${report.daysLeft} days left)`;
      if (report.chainValid !== true) return fail(what, `does not chain to the install CA: ${report.chainError ?? 'unknown'}`);
      if (report.expired) return fail(what, 'expired');
      if (report.notYetValid) return fail(what, 'not yet valid');
      if (report.expiresSoon) return warn(what, 'expires in under 30 days');
      return pass(what);
    }),
  ]);
}

/** The proxy's trust anchor: the install CA, or the public roots for a provided certificate. */
async function proxyCa(ctx: PostureContext): Promise<string> {
  if (ctx.config.tls.mode === 'provided') return tls.rootCertificates.join('\n');
  return fs.readFile(caCertFile(ctx.dir), 'utf8');
}

export const transitProbe: Probe = async (ctx) => {
  const clusters = [...clustersOf(ctx.config).keys()];
  // ssl_min_protocol_version is not read as secondary evidence: PostgreSQL shows it only to
  // superusers and members of pg_read_all_settings, which posture's roles are not.
  const perCluster = clusters.map((name) =>
    endpointResults(ctx, `cluster:${name}`, async () => {
      const e = await endpointOf(ctx.dir, ctx.config, name);
      return {host: e.host, port: e.port, servername: e.servername, caPem: e.caPem, protocol: 'postgres'};
    }),
  );

  const proxy = (async (): Promise<CheckResult[]> => {
    const checks = [TLS13, TLS12_REFUSED, CERTIFICATE];
    if (ctx.config.target === 'embedded') {
      return Promise.all(checks.map((def) => runCheck(def, 'proxy', async () => skip('an embedded install has no HTTPS proxy'))));
    }
    if (ctx.config.target === 'k8s') {
      return Promise.all(
        checks.map((def) => runCheck(def, 'proxy', async () => manual(`the proxy is reached through the Ingress controller, which dforge does not run: check https://${ctx.config.domain} from outside the cluster`))),
      );
    }
    return endpointResults(ctx, 'proxy', async () => ({host: '127.0.0.1', port: ctx.config.compose.httpsPort, servername: ctx.config.domain, caPem: await proxyCa(ctx), protocol: 'tls'}));
  })();

  return [...(await Promise.all(perCluster)).flat(), ...(await proxy)];
};
