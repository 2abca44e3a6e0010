import {Flags} from '@oclif/core';

/** The trust flags of every command that reads a bundle (verify, inspect, load, push, install, preflight). */
export const bundleTrustFlags = {
  'trusted-key': Flags.file({summary: 'An Ed25519 public key (PEM) whose signature you accept; repeatable. Also read from bundles.trustedKeys in dforge.yaml.', multiple: true, exists: true}),
  'allow-unsigned': Flags.boolean({summary: 'Accept a bundle without a signature (recorded in the ops log).', default: false}),
};
