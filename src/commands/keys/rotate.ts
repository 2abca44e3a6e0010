import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {rotateJwt, type JwtRotationResult} from '../../keys/rotate-jwt.js';
import {rotateMasterKey, type MasterRotationResult} from '../../keys/rotate-master.js';
import {withOpsRecord} from '../../audit/record.js';
import {withKeyControlContext} from '../../keys/control-context.js';

export type KeysRotateResult = {master: MasterRotationResult} | {jwt: JwtRotationResult};

export default class KeysRotate extends BaseCommand<typeof KeysRotate> {
  static override summary = 'Rotate the master key or the JWT signing key.';
  static override description = `--master re-wraps every data key and sealed secret under a new master version in a crash-safe sequence, never re-encrypting data, and retires the old version only after the re-wrap has committed. A retired version stays decrypt-only while a control backup in the catalog needs it (see dforge keys release); otherwise its material is destroyed. If it is interrupted, run it again: it finishes the job.
--jwt adds a new signing key; the previous one stays in the JWKS as verify-only for the grace period (keys.jwt.graceDays, or --grace-days), then is dropped.`;
  static override examples = ['<%= config.bin %> keys rotate --master', '<%= config.bin %> keys rotate --jwt --grace-days 3'];

  static override flags = {
    master: Flags.boolean({summary: 'Rotate the master key (KEK).', exactlyOne: ['master', 'jwt']}),
    jwt: Flags.boolean({summary: 'Rotate the JWT signing key.', exactlyOne: ['master', 'jwt']}),
    'grace-days': Flags.integer({summary: 'With --jwt: days the replaced key still verifies (default from dforge.yaml).', min: 0, max: 365, dependsOn: ['jwt']}),
  };

  async run(): Promise<KeysRotateResult> {
    const dir = this.installDir();
    if (this.flags.master) {
      const master = await withOpsRecord(dir, {action: 'keys.rotate-master', target: 'key:master', details: (r) => ({from: r.from, to: r.to, rewrapped: r.rewrapped, destroyed: r.destroyed, kept: r.kept.map((k) => k.version)})}, () =>
        withKeyControlContext(dir, ({extraSets, controlBackups}) => rotateMasterKey(dir, {command: 'dforge keys rotate --master', extraSets, controlBackups})),
      );
      const counts = Object.entries(master.rewrapped).map(([id, n]) => `${n} ${id}`).join(', ') || 'nothing';
      this.out.progress(`master key v${master.from} -> v${master.to}${master.resumed ? ' (finished an interrupted rotation)' : ''}: re-wrapped ${counts}; v${master.from} retired`);
      if (master.destroyed.length > 0) this.out.progress(`destroyed the material of master ${master.destroyed.map((v) => `v${v}`).join(', ')}`);
      for (const k of master.kept) this.out.progress(`master v${k.version} kept decrypt-only: ${k.reason}`);
      if (master.kept.length > 0) this.out.progress('take a fresh control backup (dforge backup --all), then release the old versions with: dforge keys release');
      for (const action of master.operatorActions) this.out.warn(`to finish retiring the old key: ${action}`);
      return {master};
    }
    const jwt = await withOpsRecord(dir, {action: 'keys.rotate-jwt', target: 'key:jwt', details: (r) => ({kid: r.signing.kid, dropped: r.dropped, graceDays: r.graceDays})}, () =>
      rotateJwt(dir, {graceDays: this.flags['grace-days'], command: 'dforge keys rotate --jwt'}),
    );
    this.out.progress(`JWT signing key ${jwt.signing.kid} (${jwt.signing.alg}); ${jwt.verifyOnly.length} verify-only for up to ${jwt.graceDays} days; dropped ${jwt.dropped.length}`);
    return {jwt};
  }
}
