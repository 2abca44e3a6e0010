import {execFileSync} from 'node:child_process';

import {parseBundleManifest, type BundleManifest} from '../../src/bundle/manifest.js';

/**
 * Images the bundle tests make for themselves, so removing them (to prove a load or an install
 * brought them back) never touches the shared test images.
 */

/** The Debian base every test image is built on (test/helpers/test-images.ts). */
export const TEST_BASE_IMAGE = 'dforge-test/base:bookworm';

/** Builds `ref` from `from` with `mb` MB of random data in a layer of its own and a label naming the run; returns the image id. */
export function buildRandomImage(ref: string, from: string, mb: number, label: string): string {
  const dockerfile = `FROM ${from}\nRUN head -c ${mb * 1_000_000} /dev/urandom > /blob-${label.replaceAll(/[^a-z0-9]/g, '')}\nLABEL t=${label}\n`;
  return execFileSync('docker', ['build', '-q', '-t', ref, '-'], {input: dockerfile, encoding: 'utf8'}).trim();
}

export function imageExists(ref: string): boolean {
  try {
    execFileSync('docker', ['image', 'inspect', ref], {stdio: 'ignore'});
    return true;
  } catch {
    return false;
  }
}

/** docker rmi -f of each reference that exists. */
export function removeImages(...refs: string[]): void {
  for (const ref of refs) {
    try {
      execFileSync('docker', ['rmi', '-f', ref], {stdio: 'ignore'});
    } catch {
      // already gone
    }
  }
}

/** bundle.json of a bundle file, read with tar as an outsider would. */
export const manifestOf = (bundle: string): BundleManifest => parseBundleManifest(execFileSync('tar', ['-xOf', bundle, 'bundle.json']), bundle);
