import type {BundleManifest} from './manifest.js';
import type {BundleSource} from './source.js';

/** A bundle every byte of which was checked against a bundle.json signed by a trusted key (or explicitly allowed unsigned). */
export interface VerifiedBundle {
  source: BundleSource;
  manifest: BundleManifest;
  manifestSha256: string;
  signer: {publicKeySha256: string} | null;
  bytes: number;
}
