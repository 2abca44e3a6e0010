import path from 'node:path';

import type {InstallDir} from '../state/install-dir.js';

/** Where the public half of the PKI lives: readable by services, unlike secrets/. */
export const pkiDir = (dir: InstallDir): string => path.join(dir.root, 'pki');
export const caCertFile = (dir: InstallDir): string => path.join(pkiDir(dir), 'ca.crt');
