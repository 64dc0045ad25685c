/**
 * Test kit for orchestration built on virtstream: the oVirt engine simulator with its imageio server,
 * fakes, and the strategy conformance suite.
 *
 * @module virtstream/testing
 */
export { ImageioServer } from '../testing/imageio-server/imageio-server.js';
export { ImageioProxy } from '../testing/imageio-server/imageio-proxy.js';
export type { ImageioProxyOptions, ImageioProxyRecord } from '../testing/imageio-server/imageio-proxy.js';
export type {
  ImageioFault,
  ImageioFaultMatch,
  ImageioRequestRecord,
  ImageioServerOptions,
  ImageioTicket,
  ImageioTicketStatus,
} from '../testing/imageio-server/types.js';
export { EngineSimulator } from '../testing/engine-simulator/engine-simulator.js';
export type {
  EngineSimulatorOptions,
  ImageioServerFactory,
  SimulatorDiskSpec,
  SimulatorImageioServer,
  SimulatorImageioProxy,
  SimulatorState,
  SimulatorTicket,
  SimulatorVmInfo,
  SimulatorWrite,
} from '../testing/engine-simulator/engine-simulator.js';
export { ENGINE_PROFILES, engineProfile } from '../testing/engine-simulator/engine-profiles.js';
export type { EngineProfile, EngineProfileName } from '../testing/engine-simulator/engine-profiles.js';
export { SimulatorFaults } from '../testing/engine-simulator/simulator-faults.js';
export type { RequestFault } from '../testing/engine-simulator/simulator-faults.js';
export { generateTlsMaterial } from '../testing/engine-simulator/tls-material.js';
export type { TlsMaterial } from '../testing/engine-simulator/tls-material.js';
export { simulatorFault } from '../testing/engine-simulator/simulator-extension.js';
export type { SimulatorAnswer, SimulatorExtension, SimulatorRequest } from '../testing/engine-simulator/simulator-extension.js';
export { ProxyVmSimulator } from '../testing/engine-simulator/proxy-vm-sim.js';
export type { ProxyAttachment, ProxyVmSimulatorOptions } from '../testing/engine-simulator/proxy-vm-sim.js';
export { HypervisorTree, SIMULATOR_STORAGE_DOMAIN_ID } from '../testing/engine-simulator/hypervisor-tree.js';
export type { HypervisorTreeOptions } from '../testing/engine-simulator/hypervisor-tree.js';
export { ExportDomainSimulator } from '../testing/engine-simulator/export-domain-sim.js';
export type { ExportDomainSimulatorOptions, SimDataCenter, SimV3Snapshot, SimV3Vm } from '../testing/engine-simulator/export-domain-sim.js';
export { MemoryTarget, type MemoryTargetOptions, type MemoryTargetStats } from '../testing/memory-target.js';
export {
  FaultyTarget,
  FaultInjectedError,
  type FaultyTargetOptions,
  type FaultySessionRecord,
  type InjectedFault,
} from '../testing/faulty-target.js';
export { FakeStrategy, type FakeStrategyOptions } from '../testing/fake-strategy.js';
export {
  defineStrategySuite,
  STRATEGY_SUITE_CASES,
  type StrategyFixture,
  type StrategySuiteApi,
  type StrategySuiteOptions,
  type SuiteTarget,
  type SuiteVm,
} from '../testing/strategy-suite.js';
export { defineTargetSuite, TARGET_SUITE_CASES } from '../testing/target-suite.js';
export type { TargetFixture } from '../testing/target-suite.js';
export type { QemuFormat } from '../testing/engine-simulator/qemu-tools.js';
