// Writes docs/virtstream-config.schema.json from src/cli/config-schema.ts (the one definition).
// Run: node --import tsx/esm scripts/write-config-schema.ts
import { writeFileSync } from 'node:fs';
import { CONFIG_SCHEMA } from '../src/cli/config-schema.js';

writeFileSync(new URL('../docs/virtstream-config.schema.json', import.meta.url), `${JSON.stringify(CONFIG_SCHEMA, null, 2)}\n`);
