/**
 * Test kit for orchestration built on virtstream: the oVirt engine simulator with its imageio server,
 * fakes, and the strategy conformance suite.
 *
 * @module virtstream/testing
 */
export { ImageioServer } from '../testing/imageio-server/imageio-server.js';
export type {
  ImageioFault,
  ImageioFaultMatch,
  ImageioRequestRecord,
  ImageioServerOptions,
  ImageioTicket,
  ImageioTicketStatus,
} from '../testing/imageio-server/types.js';
