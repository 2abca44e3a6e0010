import {BaseCommand} from '../../base-command.js';
import {withOpsRecord} from '../../audit/record.js';
import {withKeyControlContext} from '../../keys/control-context.js';
import {releaseRetiredMasterVersions, type ReleaseResult} from '../../keys/retention.js';

export default class KeysRelease extends BaseCommand<typeof KeysRelease> {
  static override summary = 'Destroy retired master key versions that no control backup needs any more.';
  static override description = `After dforge keys rotate --master, a retired version stays decrypt-only while a control backup in the catalog is wrapped under it, so disaster recovery keeps working. Once those backups are pruned (dforge backup prune), this destroys the version's material. It also lists control backups under retired versions that a fresh control backup under the active version, in every region, has made obsolete.`;
  static override examples = ['<%= config.bin %> keys release', '<%= config.bin %> keys release --json'];

  async run(): Promise<ReleaseResult> {
    const dir = this.installDir();
    const result = await withOpsRecord(dir, {action: 'keys.release', target: 'key:master', changed: (r) => r.destroyed.length > 0, details: (r) => ({destroyed: r.destroyed, kept: r.kept.map((k) => k.version)})}, () =>
      withKeyControlContext(dir, ({extraSets, controlBackups}) => releaseRetiredMasterVersions(dir, {command: 'dforge keys release', extraSets, controlBackups})),
    );
    this.out.progress(result.destroyed.length > 0 ? `destroyed the material of master ${result.destroyed.map((v) => `v${v}`).join(', ')}` : 'no retired master version could be destroyed');
    for (const k of result.kept) this.out.progress(`master v${k.version} kept decrypt-only: ${k.reason}`);
    if (result.obsoleteControlBackups.length > 0) {
      this.out.progress(`obsolete control backups (a newer one under v${result.activeVersion} exists in every region): ${result.obsoleteControlBackups.join(', ')}`);
    }
    for (const action of result.operatorActions) this.out.warn(`to finish retiring the old key: ${action}`);
    return result;
  }
}
