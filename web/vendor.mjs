#!/usr/bin/env node
// Copies the third-party browser code the web UI uses from node_modules (installed with `npm ci`
// from package-lock.json) into ui/vendor/, which is committed so that `cargo build` needs no npm.
//
//   cd web && npm ci && node vendor.mjs           # refresh ui/vendor/ after changing package.json
//   cd web && npm ci && node vendor.mjs --check   # exit 1 if ui/vendor/ differs (scripts/test runs it)
//
// The only change made to a file is removing its `sourceMappingURL` comment (the maps are not
// shipped; a browser's devtools would ask for them).

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const check = process.argv.includes('--check');

const hlsDir = path.dirname(require.resolve('hls.js/package.json'));
const hlsVersion = JSON.parse(fs.readFileSync(path.join(hlsDir, 'package.json'), 'utf8')).version;

const FILES = [
  { text: `hls.js ${hlsVersion} (npm, web/package-lock.json)\n`, to: 'VERSIONS.txt' },
  {
    from: path.join(hlsDir, 'dist', 'hls.light.min.mjs'),
    to: 'hls.light.min.mjs',
    transform: (text) => text.replace(/\n?\/\/# sourceMappingURL=\S+\s*$/, '\n'),
  },
  { from: path.join(hlsDir, 'LICENSE'), to: 'hls.js.LICENSE.txt' },
];

const outDir = path.join(HERE, 'ui', 'vendor');
fs.mkdirSync(outDir, { recursive: true });
let stale = 0;
for (const f of FILES) {
  let text = f.text ?? fs.readFileSync(f.from, 'utf8');
  if (f.transform) text = f.transform(text);
  const target = path.join(outDir, f.to);
  const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : null;
  if (current === text) continue;
  if (check) {
    console.error(`web/ui/vendor/${f.to} differs from hls.js ${hlsVersion} in node_modules: run 'cd web && npm ci && node vendor.mjs'`);
    stale++;
  } else {
    fs.writeFileSync(target, text);
    console.error(`wrote web/ui/vendor/${f.to} (hls.js ${hlsVersion})`);
  }
}
if (stale) process.exit(1);
console.error(check ? `web/ui/vendor is up to date (hls.js ${hlsVersion})` : 'done');
