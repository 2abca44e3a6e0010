/**
 * A set of items wrapped by the master key that a master rotation must re-wrap: the sealed files,
 * the data-key file, the tables of dforge_control. Each set re-wraps atomically (one file write,
 * one transaction); the rotation keeps both master versions until every set has committed.
 */
export interface WrappedKeySet {
  /** Key in results and status output: sealedSecrets, dataKeys, control. */
  readonly id: string;
  readonly label: string;
  /** Opens every item, so damage is found before anything changes. Returns the item count. */
  verifyAll(): Promise<number>;
  /** Items per master version, for `keys status`. */
  countByVersion(): Promise<Map<number, number>>;
  /** Re-wraps every item not yet under `toVersion`; returns how many changed. */
  rewrapAll(toVersion: number): Promise<number>;
}
