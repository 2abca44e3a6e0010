import {defineCheck, fail, pass, runCheck, skip, warn, type CheckDefinition, type Finding} from '../check.js';
import type {PostureContext, Probe} from '../context.js';
import {onControl} from '../context.js';
import {newestTenantBackups, noBackupsExpected} from './at-rest.js';

/**
 * Backups that exist are not enough: each tenant's last good backup must be recent (the policy in
 * dforge.yaml), and a deep verify (every chunk decrypted, the dump's table of contents read) must
 * have succeeded recently, or nobody knows the backups restore.
 */

const FRESHNESS = defineCheck({
  id: 'backups.freshness',
  title: 'Last good backup within the policy',
  area: 'backups',
  controls: ['GDPR Art. 32'],
  severity: 'high',
  expected: 'the newest complete backup in the catalog is younger than policy.backups.warnAfterHours (a tenant without one: WARN until it is failAfterHours old, then FAIL)',
  method: "creation time of the tenant's newest backup in the dforge_control catalog (at-rest.backup-encrypted authenticates that backup's header against it)",
  fix: 'dforge backup --tenant <slug>; schedule backups with dforge backup schedule',
});

const DEEP_VERIFY = defineCheck({
  id: 'backups.deep-verify',
  title: 'Backups deep-verified recently',
  area: 'backups',
  controls: ['GDPR Art. 32'],
  severity: 'medium',
  expected: 'a successful dforge backup verify --all --deep within policy.backups.deepVerifyWithinDays',
  method: "newest 'backup.verify' ops-log entry of a --all run with deep = true and outcome ok (the ops log's chain is checked by the audit checks)",
  fix: 'dforge backup verify --all --deep',
});

export const BACKUPS_CHECKS: readonly CheckDefinition[] = [FRESHNESS, DEEP_VERIFY];

const hoursBetween = (from: string, to: Date): number => (to.getTime() - Date.parse(from)) / 36e5;

async function lastDeepVerify(ctx: PostureContext): Promise<Finding> {
  const within = ctx.config.policy.backups.deepVerifyWithinDays;
  const rows = await onControl(ctx, (plane) =>
    plane.control.query<{at: Date}>(
      `SELECT at FROM ops_log
        WHERE action = 'backup.verify' AND target = 'backups' AND outcome = 'ok' AND details->'deep' = 'true'::jsonb
        ORDER BY seq DESC LIMIT 1`,
    ),
  );
  const at = rows.rows[0]?.at;
  if (!at) return warn('no successful deep verify of all backups on record', 'nobody has shown that the backups decrypt and restore');
  const days = hoursBetween(at.toISOString(), ctx.clock()) / 24;
  const observed = `last deep verify of all backups ${at.toISOString()} (${days.toFixed(1)} days ago; policy ${within} days)`;
  return days <= within ? pass(observed) : warn(observed, `older than ${within} days`);
}

export const backupsProbe: Probe = async (ctx) => {
  const {warnAfterHours, failAfterHours} = ctx.config.policy.backups;
  const newest = newestTenantBackups(ctx);
  newest.catch(() => undefined);
  const tenants = ctx.tenants.map((t) =>
    runCheck(FRESHNESS, `tenant:${t.slug}`, async (): Promise<Finding> => {
      const notExpected = noBackupsExpected(ctx, t);
      // A tenant in a region without a destination is not "fine": it can never have a backup.
      if (notExpected && t.status !== 'active' && t.status !== 'suspended') return skip(notExpected);
      const record = (await newest).get(t.slug);
      if (!record) {
        if (notExpected) return fail('never backed up', notExpected);
        // The exposure starts when the tenant does: a tenant created an hour ago has had no chance
        // of a nightly backup yet, one created three days ago has missed it.
        const age = hoursBetween(t.createdAt, ctx.clock());
        const observed = `never backed up; tenant created ${t.createdAt} (${age.toFixed(1)} h ago; warn after ${warnAfterHours} h, fail after ${failAfterHours} h)`;
        if (age > failAfterHours) return fail(observed, `no backup of ${t.slug} in the catalog`);
        return warn(observed, `no backup of ${t.slug} yet: take one with dforge backup --tenant ${t.slug}, or schedule them`);
      }
      const hours = hoursBetween(record.createdAt, ctx.clock());
      const observed = `last good backup ${record.id} at ${record.createdAt} (${hours.toFixed(1)} h ago; warn after ${warnAfterHours} h, fail after ${failAfterHours} h)`;
      if (hours > failAfterHours) return fail(observed, `older than ${failAfterHours} hours`);
      if (hours > warnAfterHours) return warn(observed, `older than ${warnAfterHours} hours`);
      return pass(observed);
    }),
  );
  return Promise.all([...tenants, runCheck(DEEP_VERIFY, 'install', () => lastDeepVerify(ctx))]);
};
