import {Flags} from '@oclif/core';

import {checkBundleFile, type BundleCheck} from '../bundle/verify.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Output} from '../ui/output.js';

/** The trust flags of every command that reads a bundle (verify, inspect, load, push, install, preflight). */
export const bundleTrustFlags = {
  'trusted-key': Flags.file({summary: 'An Ed25519 public key (PEM) whose signature you accept; repeatable. Also read from bundles.trustedKeys in dforge.yaml.', multiple: true, exists: true}),
  'allow-unsigned': Flags.boolean({summary: 'Accept a bundle without a signature (recorded in the ops log).', default: false}),
};

/**
 * Verifies the bundle a command was given, with the trust its flags and dforge.yaml name; progress
 * goes to stderr, and an unsigned bundle let through without an ops log to record it is warned of.
 */
export async function checkBundleFromFlags(
  file: string,
  flags: {'trusted-key'?: string[]; 'allow-unsigned': boolean},
  context: {installDir: InstallDir; out: Output},
): Promise<BundleCheck> {
  const check = await checkBundleFile(file, {
    trustedKeyFiles: flags['trusted-key'] ?? [],
    allowUnsigned: flags['allow-unsigned'],
    installDir: context.installDir,
    progress: (line) => context.out.progress(line),
  });
  if (check.unsigned?.auditedIn === null) context.out.warn(`accepted an UNSIGNED bundle; not recorded: ${check.unsigned.reason}`);
  return check;
}
