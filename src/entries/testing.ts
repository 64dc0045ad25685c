/**
 * Test kit for orchestration built on virtstream: the oVirt engine simulator with its imageio server,
 * fakes, and the strategy conformance suite.
 *
 * @module virtstream/testing
 */
export {};
