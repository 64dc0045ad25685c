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
  target: 'node20',
  splitting: true,
  sourcemap: true,
  // p-retry and p-limit are ESM-only; bundle them so the CJS build never needs require(esm).
  noExternal: ['p-retry', 'p-limit', 'yocto-queue', 'is-network-error'],
});
