import type {KeyObject} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {recordOps} from '../audit/record.js';
import {loadConfigFile} from '../config/load.js';
import type {InstallDir} from '../state/install-dir.js';

import {readEd25519PublicKey} from '../pki/ed25519.js';

/** Which signers a reader accepts: keys from --trusted-key and from dforge.yaml's bundles.trustedKeys. */
export interface BundleTrust {
  trustedKeys: KeyObject[];
  allowUnsigned: boolean;
}

export async function bundleTrustFrom(options: {trustedKeyFiles: readonly string[]; configuredKeyFiles: readonly string[]; allowUnsigned: boolean}): Promise<BundleTrust> {
  const hint = 'Pass the bundle signer\'s Ed25519 public key (the .pub that dforge bundle keygen wrote) with --trusted-key, or list it under bundles.trustedKeys in dforge.yaml.';
  const files = [...new Set([...options.trustedKeyFiles, ...options.configuredKeyFiles])];
  const trustedKeys = await Promise.all(files.map((file) => readEd25519PublicKey(file, hint)));
  return {trustedKeys, allowUnsigned: options.allowUnsigned};
}

/** bundles.trustedKeys of the install's dforge.yaml, resolved against the install directory; none without an install. */
export async function configuredTrustedKeyFiles(dir: InstallDir): Promise<string[]> {
  const exists = await fs.stat(dir.configFile).then(
    () => true,
    () => false,
  );
  if (!exists) return [];
  const config = await loadConfigFile(dir.configFile);
  return (config.bundles?.trustedKeys ?? []).map((file) => path.resolve(dir.root, file));
}

/** Where an unsigned bundle that --allow-unsigned let through was recorded. */
export type UnsignedAudit = {auditedIn: {opsLogSeq: number; at: string}} | {auditedIn: null; reason: string};

/**
 * Writes to the ops log that an unsigned bundle was accepted. With no install or no reachable
 * control plane there is no log to write to: the result says so, and the command warns.
 */
export async function recordUnsignedAllowed(dir: InstallDir, target: string, details: Record<string, unknown>): Promise<UnsignedAudit> {
  const stored = await recordOps(dir, {action: 'bundle.verify', target, outcome: 'waived', details: {...details, waiver: 'unsigned bundle accepted with --allow-unsigned'}});
  if (stored === undefined) return {auditedIn: null, reason: `no install with a reachable control plane at ${dir.root}, so there is no ops log to record this in`};
  return {auditedIn: {opsLogSeq: stored.seq, at: stored.at}};
}
