import {BaseCommand} from '../../base-command.js';
import {withKeyControlContext} from '../../keys/control-context.js';
import {keysStatus, type KeysStatus} from '../../keys/status.js';
import {renderTable} from '../../ui/table.js';
import {formatTime} from '../../ui/time.js';

/** What each wrapped-key set holds, as a column header (see MasterVersionStatus.protects). */
const SET_HEADERS: Record<string, string> = {sealedSecrets: 'sealed secrets', dataKeys: 'data keys', control: 'tenant passwords'};

export default class KeysStatusCommand extends BaseCommand<typeof KeysStatusCommand> {
  static override summary = 'Show the key versions in use, their age, and what each protects.';
  static override examples = ['<%= config.bin %> keys status', '<%= config.bin %> keys status --json'];

  async run(): Promise<KeysStatus> {
    const dir = this.installDir();
    const status = await withKeyControlContext(dir, ({extraSets, controlBackups, tenantDataKeys}) => keysStatus(dir, {extraSets, controlBackups, tenantDataKeys}));
    if (!this.jsonEnabled()) {
      const m = status.master;
      this.log(`master key (${m.provider}), active v${m.activeVersion}${m.rotationInProgress ? `, ROTATION IN PROGRESS v${m.rotationInProgress.from} -> v${m.rotationInProgress.to}: re-run dforge keys rotate --master` : ''}`);
      const sets = Object.keys(m.versions[0]?.protects ?? {});
      this.log(
        renderTable(
          ['version', 'state', 'age (days)', ...sets.map((id) => SET_HEADERS[id] ?? id), 'control backups', 'material'],
          m.versions.map((v) => [
            `v${v.version}`,
            v.state,
            String(v.ageDays),
            ...sets.map((id) => String(v.protects[id] ?? 0)),
            String(v.controlBackups.count),
            v.destroyed ? 'destroyed' : v.materialPresent ? (v.state === 'retired' ? 'present (decrypt-only)' : 'present') : 'MISSING',
          ]),
        ),
      );
      const versions = status.dataKeys.reduce((n, d) => n + d.versions, 0);
      this.log(`\ndata keys: ${status.dataKeys.length} tenant data key${status.dataKeys.length === 1 ? '' : 's'} (${versions} version${versions === 1 ? '' : 's'})`);
      if (status.dataKeys.length > 0) {
        this.log(renderTable(['owner', 'active', 'versions', 'oldest (days)'], status.dataKeys.map((d) => [d.owner, `v${d.activeVersion}`, String(d.versions), String(d.oldestAgeDays)])));
      }
      this.log(`\nJWT signing keys`);
      this.log(renderTable(['kid', 'alg', 'state', 'age (days)', 'verifies until'], status.jwt.map((k) => [k.kid, k.alg, k.state, String(k.ageDays), k.verifyUntil ? formatTime(k.verifyUntil) : '-'])));
    }
    for (const v of status.master.versions) {
      if (v.state === 'retired' && v.materialPresent && v.controlBackups.count === 0) this.out.warn(`retired master v${v.version} still has key material and nothing needs it; destroy it with: dforge keys release`);
      if (v.state === 'retired' && v.controlBackups.count > 0 && v.destroyed) this.out.warn(`${v.controlBackups.count} control backup(s) need master v${v.version}, whose material is gone: they cannot be opened (${v.controlBackups.ids.join(', ')})`);
    }
    return status;
  }
}
