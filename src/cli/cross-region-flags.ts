import {Flags} from '@oclif/core';

/** --allow-cross-region and --reason, shared by every command that can move a tenant's data (src/residency/policy.ts). */
export const crossRegionFlags = {
  'allow-cross-region': Flags.boolean({
    summary: "Permit, for this run only, putting a tenant's data outside its region; needs --reason and is written to the ops log.",
    default: false,
    helpGroup: 'RESIDENCY',
  }),
  reason: Flags.string({summary: 'Why the cross-region transfer is approved (a ticket or legal basis); recorded in the ops log.', helpGroup: 'RESIDENCY'}),
};
