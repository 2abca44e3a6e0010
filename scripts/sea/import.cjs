'use strict';
// Loaded from the unpacked tree by scripts/sea/main.cjs: code outside the executable's main script
// gets the normal module loader, so import() of ESM with top-level await (bin/run.js) works here.
const {pathToFileURL} = require('node:url');

module.exports = (file) => import(pathToFileURL(file).href);
