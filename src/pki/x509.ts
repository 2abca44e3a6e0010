/**
 * The one place that loads @peculiar/x509, so its preconditions hold wherever it is used: the
 * Reflect metadata API exists before the import (x509 v2's tsyringe container throws without
 * it), and the crypto provider
 * is Node's own WebCrypto. x509 v2 finds `globalThis.crypto` by itself on Node; setting it here
 * makes that explicit and keeps a provider registered elsewhere in the process from being used.
 */

import 'reflect-metadata';

import {webcrypto} from 'node:crypto';

import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export {x509};
