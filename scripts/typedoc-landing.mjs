// typedoc plugin (typedoc.json "plugin"): the API site's landing page shows README.md under
// typedoc's own page title, the project name. README starts with that same heading for GitHub and
// npm; drop it there so the landing page has one "virtstream" heading, not two.
import { Converter } from 'typedoc';

/** @param {import('typedoc').Application} app */
export function load(app) {
  app.converter.on(Converter.EVENT_RESOLVE_END, (context) => {
    const first = context.project.readme?.[0];
    if (first?.kind !== 'text') return;
    const name = context.project.name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    first.text = first.text.replace(new RegExp(`^\\s*#\\s+${name}\\s*\\n`), '');
  });
}
