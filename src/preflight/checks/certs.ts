import {certificatesStatus} from '../../certs/service.js';
import {readCertificate} from '../../certs/store.js';
import type {CheckOutcome, PreflightCheck} from '../check.js';

export const certificatesCheck: PreflightCheck = {
  id: 'certs.expiry',
  title: 'Certificates valid',
  async run(ctx): Promise<CheckOutcome> {
    if (!(await readCertificate(ctx.dir, 'ca'))) return {status: 'pass', detail: 'no PKI yet: the CA and certificates are generated at install'};
    const {certificates} = await certificatesStatus(ctx.dir, {clock: ctx.now});
    const expired = certificates.filter((c) => c.report.expired);
    const soon = certificates.filter((c) => c.report.expiresSoon);
    const broken = certificates.filter((c) => c.report.chainValid === false);
    const soonest = [...certificates].sort((a, b) => a.report.daysLeft - b.report.daysLeft)[0];
    const describe = (list: typeof certificates, what: (c: (typeof certificates)[number]) => string): string => list.map((c) => `${c.name} ${what(c)}`).join(', ');
    const findings = [
      expired.length > 0 ? `expired: ${describe(expired, (c) => `on ${c.report.notAfter.slice(0, 10)}`)}` : '',
      broken.length > 0 ? `not signed by the install CA: ${broken.map((c) => c.name).join(', ')}` : '',
      soon.length > 0 ? `expiring: ${describe(soon, (c) => `in ${c.report.daysLeft} days`)}` : '',
    ].filter(Boolean);
    const detail = findings.length > 0 ? findings.join('; ') : `${certificates.length} certificates valid; the first to expire is ${soonest?.name} in ${soonest?.report.daysLeft} days`;
    const attention = [...expired, ...broken, ...soon];
    if (attention.length === 0) return {status: 'pass', detail};
    // Internal leaves are re-issued by dforge; an imported one comes from the operator's CA; the CA itself is not renewed in place.
    const leaves = [...new Set(attention.filter((c) => c.name !== 'ca' && c.source === 'internal').map((c) => c.name))];
    const imported = [...new Set(attention.filter((c) => c.source === 'imported').map((c) => c.name))];
    const remedy = [
      leaves.length > 0 ? `Run: dforge certs renew ${leaves.join(' ')}` : '',
      imported.length > 0 ? `Import renewed certificates for ${imported.join(', ')} with: dforge certs import` : '',
      attention.some((c) => c.name === 'ca') ? 'The install CA itself is affected: see dforge certs status and plan a new CA.' : '',
    ].filter(Boolean);
    return {status: expired.length > 0 || broken.length > 0 ? 'fail' : 'warn', detail, remedy: remedy.join(' ')};
  },
};
