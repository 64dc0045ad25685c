import { afterAll, beforeAll, describe, it } from 'vitest';
import { withRuntime } from '../../../src/index.js';
import { defineStrategySuite } from '../../../src/entries/testing.js';
import { fakeFixture } from './fake-fixture.js';

const api = { describe, it, beforeAll, afterAll };

defineStrategySuite('FakeStrategy', () => fakeFixture(), api, { timeoutMs: 30_000 });

defineStrategySuite('FakeStrategy under RuntimeStrategy', () => fakeFixture((s) => withRuntime(s)), api, { timeoutMs: 30_000 });
