import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    rhv: 'src/entries/rhv.ts',
    libvirt: 'src/entries/libvirt.ts',
    ssh: 'src/entries/ssh.ts',
    testing: 'src/entries/testing.ts',
    cli: 'src/cli/main.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  // The lowest Node line in `engines` (>=20.19), on purpose: what builds for 20 runs on 22 and 24.
  target: 'node20',
  splitting: true,
  // import.meta.url in the CommonJS build (from __filename): the zstd worker resolves fzstd from it
  shims: true,
  // No source maps: dist is unminified, so stack traces already point at readable code, and maps
  // would either embed every source (55% of the tarball) or point at src/ files that are not shipped.
  sourcemap: false,
  // p-retry and p-limit (with their dependencies) are ESM-only and tiny: bundled, so the CJS build
  // loads in every CommonJS loader (Jest's runtime and ts-node lack require(esm)). They are
  // therefore devDependencies, not dependencies; scripts/check-package.mjs keeps both in sync.
  noExternal: ['p-retry', 'p-limit', 'yocto-queue', 'is-network-error'],
});
