#!/usr/bin/env node
// The `virtstream` command; see docs/guides/cli.md.
console.error('virtstream CLI: not built yet');
process.exitCode = 1;
