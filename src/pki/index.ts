/**
 * dforge's PKI: the install CA, the leaves it issues, inspection for `certs status`, checks for
 * `certs import`, and the CA as a PKCS#12 trust bundle. Pure library: no storage, no CLI, and the
 * clock is always an argument.
 */

export {type CaOptions, type CertAndKey, CA_EMAIL_URI_HOST, CA_PERMITTED_IP_RANGES, caNameConstraints, generateCa} from './ca.js';
export {type ImportOptions, type ImportReport, type ImportResult, checkImport} from './import.js';
export {type CertificateReport, inspectCertificate} from './inspect.js';
export {type KeyAlgorithm, keyAlgorithms} from './keys.js';
export {type LeafOptions, type LeafUsage, issueLeaf} from './leaf.js';
export {type NameConstraints, type NameSubtrees, sameNameConstraints} from './names.js';
export {type Pkcs12Options, caToPkcs12} from './pkcs12.js';
export {CA_VALIDITY_DAYS, EXPIRY_WARNING_DAYS, LEAF_VALIDITY_DAYS, RENEW_AFTER_FRACTION} from './profile.js';
