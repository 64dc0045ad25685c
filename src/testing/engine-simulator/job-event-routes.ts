/**
 * Routes of the jobs and events services (types/Job.java, JobMapper; types/Event.java,
 * EventMapper), internal: jobs recorded for correlation ids, external events as
 * AddExternalEventCommand validates them.
 *
 * @module
 */
import { child, refId, text, toXml } from '../../rhv/rest/xml.js';
import type { XmlObject } from '../../rhv/rest/xml.js';
import { SimFault } from './engine-errors.js';
import { route } from './engine-http.js';
import type { Route } from './engine-http.js';
import type { EngineModel } from './engine-model.js';
import { jobXml } from './engine-views.js';

/** The jobs and events routes over `model`. @internal */
export function jobAndEventRoutes(model: EngineModel): Route[] {
  return [
    route('GET', '/jobs', async (_m, q) => {
      const cid = /^correlation_id=(.*)$/.exec(q.get('search') ?? '')?.[1];
      const jobs = model.jobs.filter((j) => cid === undefined || j.correlationId === cid);
      return [200, toXml('jobs', { job: jobs.map(jobXml) })];
    }),
    route('GET', '/events', async () => [200, toXml('events', { event: model.events })]),
    route('POST', '/events', async (_m, _q, body) => {
      const e = child(body, 'event');
      // BackendEventsResource.add: validateParameters(origin, severity, customId, description)
      const missing = ['origin', 'severity', 'custom_id', 'description'].filter((k) => !text(e, k));
      if (missing.length)
        throw new SimFault(400, 'Incomplete parameters', `Event [${missing.map((k) => (k === 'custom_id' ? 'customId' : k)).join(', ')}] required for add`);
      // Event.customId is an Integer and AuditLog.customEventId an int: the XML reader refuses anything
      // else (IOExceptionMapper: "Invalid value")
      const customId = text(e, 'custom_id')!;
      if (!/^-?\d{1,10}$/.test(customId) || Number(customId) > 2_147_483_647 || Number(customId) < -2_147_483_648) {
        throw new SimFault(400, 'Invalid value', `Value '${customId.slice(0, 40)}' isn't a valid integer`);
      }
      // AddExternalEventCommand.validate
      if (text(e, 'origin')!.toLowerCase() === 'ovirt')
        throw new SimFault(409, 'Operation Failed', '[Cannot add External Event. Illegal Origin for External Event : oVirt]');
      if (model.events.some((x) => x.origin === text(e, 'origin') && x.custom_id === customId)) {
        throw new SimFault(409, 'Operation Failed', '[Cannot add External Event. External Event with this custom id already exists.]');
      }
      const ev: XmlObject = {
        '@id': String(model.events.length + 1),
        code: 12,
        custom_id: customId,
        description: text(e, 'description'),
        origin: text(e, 'origin'),
        severity: text(e, 'severity') ?? 'normal',
        time: new Date().toISOString(),
        ...(refId(e, 'vm') ? { vm: { '@id': refId(e, 'vm') } } : {}),
      };
      model.events.push(ev);
      return [201, toXml('event', ev)];
    }),
  ];
}
