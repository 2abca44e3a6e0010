import {recordOps} from '../audit/record.js';
import {UsageError, UserError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {openPostureContext} from './context.js';
import {recordRun} from './history.js';
import {KNOWN_CHECKS, PROBES} from './probes/index.js';
import {runPosture, type FailOn, type PostureReport} from './service.js';
import {loadWaivers, unknownWaiverChecks} from './waivers.js';

export interface PostureRunOptions {
  readonly tenant?: string;
  readonly failOn?: FailOn;
  readonly waiversFile?: string;
  /** Store the run under state/posture/ (MAC'd) and announce it in the ops log. */
  readonly record?: boolean;
  readonly concurrency?: number;
  readonly clock?: () => Date;
}

/**
 * `dforge posture`: opens the install, runs every probe, applies waivers, writes each waiver used
 * to the ops log, and records the run when asked. The control plane is always closed.
 */
export async function checkPosture(dir: InstallDir, options: PostureRunOptions = {}): Promise<PostureReport> {
  const waivers = options.waiversFile ? await loadWaivers(options.waiversFile) : [];
  const unknown = unknownWaiverChecks(waivers, KNOWN_CHECKS);
  if (unknown.length > 0) {
    throw new UsageError(`${options.waiversFile}: waiver ${unknown[0]!.id} names check ${unknown[0]!.check}, which posture does not have`, {
      nextSteps: ['Check ids are in the details table of dforge posture (and in its --json output): correct the id, or remove the waiver.'],
    });
  }
  const ctx = await openPostureContext(dir, {tenant: options.tenant, clock: options.clock, concurrency: options.concurrency});
  try {
    // A waiver is used only where its use goes on record: without the ops log, none applies.
    const usable = ctx.plane ? waivers : [];
    const measured = await runPosture(ctx, PROBES, {waivers: usable, failOn: options.failOn});
    const report =
      waivers.length > 0 && !ctx.plane
        ? {...measured, waivers: {...measured.waivers, ignored: `not applied: the ops log (dforge_control) could not be reached to record their use (${ctx.planeError ?? ''})`}}
        : measured;
    if (ctx.plane) {
      const plane = ctx.plane;
      for (const use of report.waivers.used) {
        await recordOps(plane, {
          action: 'posture.waiver',
          target: `check:${use.check}`,
          outcome: use.expired ? 'failed' : 'waived',
          details: {waiver: use.waiver.id, scope: use.scope, measured: use.measured, approver: use.waiver.approver, expires: use.waiver.expires, reason: use.waiver.reason, expired: use.expired},
        });
      }
    }
    if (!options.record) return report;
    if (!ctx.plane) {
      throw new UserError(`posture --record needs dforge_control (it is MAC'd with the ops-log key and announced in the ops log), which could not be reached: ${ctx.planeError ?? ''}`, {
        nextSteps: ['Run dforge posture without --record to see what is down, fix it, then record.'],
      });
    }
    return {...report, record: await recordRun(ctx.plane, report)};
  } finally {
    await ctx.plane?.close();
  }
}
