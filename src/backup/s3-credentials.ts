import {withOpsRecord} from '../audit/record.js';
import {loadConfigFile} from '../config/load.js';
import {UsageError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import type {InstallDir} from '../state/install-dir.js';
import {destinationsOf} from './destination.js';
import {parseS3Credentials, S3Destination, type S3DestinationConfig} from './s3-destination.js';

export interface SealedCredentials {
  readonly destination: string;
  readonly region: string;
  /** The sealed secret's name (never its value). */
  readonly secret: string;
  /** Whether the bucket answered a listing with these credentials before they were sealed. */
  readonly verified: boolean;
}

/**
 * Seals an S3 destination's credentials under the secret name dforge.yaml gives it. With `verify`
 * the bucket must first answer a listing with them, so a typo fails here and not at 2 a.m. in the
 * first scheduled backup. The value is never returned, logged or recorded.
 */
export async function sealDestinationCredentials(dir: InstallDir, name: string, input: string, options: {verify: boolean}): Promise<SealedCredentials> {
  const config = await loadConfigFile(dir.configFile);
  const found = destinationsOf(config).get(name);
  if (!found) throw new UsageError(`no backup destination ${name} in ${dir.configFile}`, {nextSteps: ['Name a destination declared under regions.<region>.backup.destinations.']});
  if (found.config.kind !== 's3') throw new UsageError(`backup destination ${name} is a local directory: it has no credentials`, {nextSteps: ['Only kind: s3 destinations take credentials.']});
  const s3: S3DestinationConfig = found.config;
  let credentials;
  try {
    credentials = parseS3Credentials(input, 'standard input');
  } catch (err) {
    throw new UsageError((err as Error).message, {nextSteps: (err as UsageError).nextSteps});
  }
  const secret = s3.credentials.secret;
  // This command writes whatever secret name dforge.yaml gives; confined to backup/, it can never
  // overwrite a cluster password, a certificate key or the export signing key.
  if (!secret.startsWith('backup/')) {
    throw new UsageError(`backup destination ${name} names secret ${secret}, outside backup/: dforge backup credentials writes only under backup/`, {
      nextSteps: [`Set regions.${found.region}.backup.destinations[${name}].credentials.secret to backup/${name} in ${dir.configFile}, then run this again.`],
    });
  }
  return withOpsRecord(dir, {action: 'backup.credentials', target: name, details: (r: SealedCredentials) => ({region: r.region, secret: r.secret, verified: r.verified})}, async () => {
    if (options.verify) await new S3Destination(found.region, s3, {get: () => Promise.resolve(Buffer.from(JSON.stringify(credentials)))}).where();
    const keys = await openKeyServices(dir);
    await keys.keyring.withWrites(`dforge backup credentials: seal ${secret}`, () => keys.sealed.put(secret, JSON.stringify(credentials)));
    return {destination: name, region: found.region, secret, verified: options.verify};
  });
}
