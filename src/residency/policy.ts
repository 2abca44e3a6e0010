import type {DforgeConfig} from '../config/schema.js';
import {UsageError, UserError} from '../errors.js';
import type {OpsLogSink} from '../audit/record.js';
import {recordOps} from '../audit/record.js';

/**
 * The one rule of data residency (DESIGN §10): a tenant's data stays in the region it is pinned to.
 * Every path that copies it (backups, restores, audit exports and decrypts on this host, tenant
 * moves) asks `checkRegion` first. Crossing needs an approval the operator gives for one run
 * (`--allow-cross-region --reason`), written to the ops log before any data moves, so an auditor
 * sees every transfer and why it was allowed. Where a tenant lives has no approval at all:
 * placement refuses another region's cluster, and TenantService refuses a tenant whose cluster
 * dforge.yaml no longer puts in its region (src/residency/misplaced.ts).
 */

/** What crossing a region does, in the words the refusal and the ops log use. */
export type CrossRegionOperation = 'backup' | 'restore' | 'restore-as' | 'export' | 'move';

/** The operator's one-run approval: `--allow-cross-region --reason TEXT`. */
export interface CrossRegionApproval {
  readonly reason: string;
}

export interface RegionCrossing {
  readonly tenant: string;
  /** The region the tenant is pinned to. */
  readonly from: string;
  /** The region the data would end up in. */
  readonly to: string;
  readonly operation: CrossRegionOperation;
  /** What would cross, for the message: "backup to destination us-backups". */
  readonly what: string;
  /** The command to re-run with the approval flags appended. */
  readonly rerun: string;
}

/** Thrown when data would leave its region without an approval: exit 1, naming tenant, regions and flag. */
export class CrossRegionError extends UserError {}

/** The jurisdiction label of a region, for messages and reports (`unlabelled` on a single-region install without one). */
export function jurisdictionOf(config: DforgeConfig, region: string): string {
  return config.regions[region]?.jurisdiction ?? 'unlabelled';
}

const label = (config: DforgeConfig, region: string): string => `${region} (${jurisdictionOf(config, region)})`;

/**
 * The approval from the flags, or undefined. `--reason` without `--allow-cross-region`, or the
 * flag without a reason, is a usage error: an exception nobody can explain is not an approval.
 */
export function approvalFromFlags(flags: {'allow-cross-region'?: boolean; reason?: string}): CrossRegionApproval | undefined {
  const allow = flags['allow-cross-region'] === true;
  const reason = flags.reason?.trim();
  if (!allow && reason) throw new UsageError('--reason only applies with --allow-cross-region', {nextSteps: ['Add --allow-cross-region, or drop --reason.']});
  if (!allow) return undefined;
  if (!reason || reason.length < 4) {
    throw new UsageError('--allow-cross-region needs --reason TEXT: the ops log records why data left its region', {nextSteps: ['Add --reason "ticket or legal basis, e.g. DPA-2026-14 customer-requested move"']});
  }
  return {reason};
}

/**
 * Refuses a crossing without approval; with one, returns the ops-log entry to write (nothing when
 * the regions match). Call it before any data moves.
 */
export function checkRegion(config: DforgeConfig, crossing: RegionCrossing, approval: CrossRegionApproval | undefined): {crossing: RegionCrossing; approval: CrossRegionApproval} | undefined {
  if (crossing.from === crossing.to) return undefined;
  if (!approval) {
    throw new CrossRegionError(
      `refusing ${crossing.what}: it would take data of tenant ${crossing.tenant} out of region ${label(config, crossing.from)} into region ${label(config, crossing.to)}; nothing was changed`,
      {
        nextSteps: [
          `Keep the data in region ${crossing.from}, or, if this transfer is approved, re-run with --allow-cross-region --reason "<why>": ${crossing.rerun} --allow-cross-region --reason "<why>"`,
          'The approval applies to this run only and is written to the ops log (dforge residency report lists it).',
        ],
        data: {tenant: crossing.tenant, fromRegion: crossing.from, toRegion: crossing.to, operation: crossing.operation, flag: '--allow-cross-region'},
      },
    );
  }
  return {crossing, approval};
}

/**
 * Writes an approved crossing to the ops log as `residency.cross-region`: tenant, both regions and
 * jurisdictions, the operation and the reason. It must succeed before the data moves: an exception
 * that cannot be recorded is not taken.
 */
export async function recordCrossing(sink: OpsLogSink, config: DforgeConfig, approved: {crossing: RegionCrossing; approval: CrossRegionApproval}, now?: Date): Promise<void> {
  const {crossing, approval} = approved;
  const stored = await recordOps(
    sink,
    {
      action: 'residency.cross-region',
      target: `tenant:${crossing.tenant}`,
      outcome: 'waived',
      details: {
        operation: crossing.operation,
        what: crossing.what,
        fromRegion: crossing.from,
        fromJurisdiction: jurisdictionOf(config, crossing.from),
        toRegion: crossing.to,
        toJurisdiction: jurisdictionOf(config, crossing.to),
        reason: approval.reason,
      },
    },
    now,
  );
  if (!stored) {
    throw new UserError(`the cross-region exception for tenant ${crossing.tenant} could not be written to the ops log, so it was not taken`, {
      nextSteps: ['Check that dforge_control is reachable (dforge status), then re-run.'],
    });
  }
}

/** `checkRegion`, then `recordCrossing` when approved: the usual pair at the start of an operation. */
export async function enforceRegion(sink: OpsLogSink, config: DforgeConfig, crossing: RegionCrossing, approval: CrossRegionApproval | undefined, now?: Date): Promise<boolean> {
  const approved = checkRegion(config, crossing, approval);
  if (approved) await recordCrossing(sink, config, approved, now);
  return approved !== undefined;
}
