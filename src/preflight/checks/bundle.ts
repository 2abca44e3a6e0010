import {promises as fs} from 'node:fs';

import {engineLayerChains, planLoad} from '../../bundle/load.js';
import type {VerifiedBundle} from '../../bundle/verified-bundle.js';
import {formatBytes} from '../../ui/bytes.js';
import type {CheckOutcome, PreflightCheck} from '../check.js';

/** preflight --bundle: the bundle verifies against a trusted key, and the engine has room for it. */

export const bundleVerifiedCheck: PreflightCheck = {
  id: 'bundle.verify',
  title: 'Offline bundle: signature and every hash',
  // A full streaming pass over the bundle: at a few hundred MB/s, minutes for a large one.
  timeoutMs: 30 * 60_000,
  async run(ctx) {
    const verified = await ctx.bundle!();
    const m = verified.manifest;
    return {status: 'pass', detail: `release ${m.release}, ${m.images.length} images, ${formatBytes(verified.bytes)}, ${verified.signer === null ? 'UNSIGNED (allowed by --allow-unsigned)' : `signed by ${verified.signer.publicKeySha256}`}`};
  },
};

export const bundleSpaceCheck: PreflightCheck = {
  id: 'bundle.space',
  title: "Offline bundle: room in the engine's data-root",
  timeoutMs: 30 * 60_000,
  async run(ctx) {
    const verified = await ctx.bundle!();
    const engine = await ctx.docker();
    const st = await fs.statfs(engine.rootDir);
    return spaceOutcome(verified, await engineLayerChains(engine.client), st.bavail * st.bsize, engine.rootDir);
  },
};

/**
 * What loading needs under the data-root: every layer and config the engine lacks, plus the
 * engine's own staging of one image's archive at a time (dforge loads image by image, so that is
 * the largest single image's new bytes, never a second copy of the bundle).
 */
export function spaceOutcome(verified: VerifiedBundle, present: ReadonlySet<string>, free: number, rootDir: string): CheckOutcome {
  const plan = planLoad(verified, present);
  const total = plan.reduce((n, p) => n + p.bytes, 0);
  const staging = Math.max(0, ...plan.map((p) => p.bytes));
  const need = total + staging;
  const detail = `${formatBytes(need)} needed under ${rootDir} (${formatBytes(total)} of new layers and configs, ${formatBytes(staging)} for the engine to stage one image), ${formatBytes(free)} free`;
  if (free < need) return {status: 'fail', detail, remedy: `Free ${formatBytes(need - free)} under ${rootDir}, or move Docker's data-root (/etc/docker/daemon.json) to a larger file system.`};
  return {status: 'pass', detail};
}
