// typedoc plugin (typedoc.json "plugin"): the API pages of each entry are grouped by what a reader
// looks for (Strategies, Clients, Targets, Formats, Errors) instead of by declaration kind. The group
// follows from where an export is declared, so a new export lands in its group without a tag; an
// explicit `@group` in its TSDoc still wins. What matches no rule keeps typedoc's kind groups.
import { Comment, CommentTag, Converter, ReflectionKind } from 'typedoc';

/** First match wins: an error class is an Error wherever it lives. */
const RULES = [
  { group: 'Errors', test: (file, name) => /Error(Code|Options)?$/.test(name) || /(^|\/|-)errors?\.ts$/.test(file) },
  { group: 'Strategies', test: (file) => file.startsWith('strategies/') || file === 'core/strategy.ts' || file === 'core/runtime-strategy.ts' },
  {
    group: 'Targets',
    test: (file) => /^(targets|retention)\//.test(file) || file === 'core/target.ts' || /^testing\/(memory|faulty)-target\.ts$/.test(file),
  },
  { group: 'Formats', test: (file) => file.startsWith('formats/') || file.startsWith('snapshot/') },
  { group: 'Clients', test: (file) => /^(rhv|libvirt|core\/ssh|core\/exec)\//.test(file) },
  // cancellation, cleanup, progress, logging, retry, waiting, streams, the data model
  { group: 'Runtime', test: (file) => file.startsWith('core/') },
];

/** @param {import('typedoc').Application} app */
export function load(app) {
  app.converter.on(
    Converter.EVENT_RESOLVE_BEGIN,
    (context) => {
      for (const module of context.project.getChildrenOrSelfByKind?.(ReflectionKind.Module) ?? context.project.children ?? []) {
        for (const child of module.children ?? []) {
          if (child.comment?.blockTags.some((t) => t.tag === '@group')) continue;
          const file = sourceFile(context, child);
          const rule = file && RULES.find((r) => r.test(file, child.name));
          if (!rule) continue;
          child.comment ??= new Comment();
          child.comment.blockTags.push(new CommentTag('@group', [{ kind: 'text', text: rule.group }]));
        }
      }
    },
    // before typedoc's own resolve-time plugins, which read `@group`
    1000,
  );
}

/** The declaring file relative to src/ (`strategies/rhv/image-transfer.ts`), or undefined. */
function sourceFile(context, reflection) {
  const symbol = context.getSymbolFromReflection(reflection);
  const decl = symbol?.declarations?.[0];
  const name = decl?.getSourceFile().fileName.replaceAll('\\', '/');
  const at = name?.lastIndexOf('/src/') ?? -1;
  return at >= 0 ? name.slice(at + 5) : undefined;
}
