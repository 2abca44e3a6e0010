import {generateCertificates} from '../certs/service.js';
import {initKeys} from '../keys/init.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';

/**
 * The Keys and PKI steps every kind of install shares (quickstart, install): idempotent, so a
 * re-run keeps what exists. `onCa` receives the CA fingerprint for the summary.
 */
export function keyAndPkiSteps<C>(dir: InstallDir, command: string, onCa: (ctx: C, fingerprint: string) => void): Array<Step<C>> {
  return [
    {
      title: 'Keys',
      async run() {
        const r = await initKeys(dir, {command});
        return `master key v${r.masterVersion} (${r.provider}), JWT key ${r.jwt.kid.slice(0, 8)}`;
      },
    },
    {
      title: 'PKI',
      async run(ctx) {
        const r = await generateCertificates(dir, {command});
        onCa(ctx, r.caFingerprint);
        const created = r.certificates.filter((c) => c.action === 'created').length;
        return created > 0 ? `${created} certificate(s) issued` : 'all certificates present';
      },
    },
  ];
}
