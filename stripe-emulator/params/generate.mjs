#!/usr/bin/env node
// Writes the emulator's parameter allow-lists, `params/<api-version>.json`, from the TypeScript
// type definitions of Stripe's official Node SDK (the `stripe` package on the npm registry),
// which are generated from Stripe's OpenAPI spec for the API version the package pins.
//
// Re-run it when the pin moves (and move `STRIPE_API_VERSION` in core/src/stripe.rs and
// `PINNED_API_VERSION` in stripe-emulator/src/params.rs to the version it prints):
//
//   mkdir -p /tmp/stripe-sdk && cd /tmp/stripe-sdk && npm install stripe typescript@5
//   node /path/to/stripe-emulator/params/generate.mjs /tmp/stripe-sdk/node_modules/stripe
//
// TypeScript 5 (the last line with the classic compiler API; 7 has none yet) is taken from
// beside the `stripe` package. The output is checked in as data: CI never runs this script.
// Delete the old `<version>.json` once nothing refers to it.
//
// For each endpoint the project uses it records every accepted parameter path in Stripe's
// bracket form: `address[line1]`, `controller[fees][payer]`, array items as `expand[]` and
// `tax_id_data[][type]`. Each path says which value shapes it takes (`string`, `number`,
// `boolean`, `hash`, `array`), its enum values where the types list them, whether "" is
// accepted to unset it (`emptyable`; on a `/v2` endpoint, whose bodies are JSON, it means the
// SDK types take `null`), whether the SDK marks it required, and `free_form` for hashes with
// arbitrary keys (`metadata`), below which nothing is listed.
//
// The `/v2` endpoints (Accounts v2, Account Links v2, thin Events) come from the SDK's
// `resources/V2/Core/*.d.ts` the same way. Two things the SDK's types cannot say are added by
// hand, each with its source, in `V2_ADDITIONS` below. The output also lists `v2_event_types`:
// every thin event type the SDK declares (`type: 'v2.core.account.created'`, ...).

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [packageDir] = process.argv.slice(2);
if (!packageDir) {
  console.error('usage: node generate.mjs <path to an installed stripe package>');
  process.exit(2);
}
const sdkRoot = path.resolve(packageDir);
const require = createRequire(path.join(sdkRoot, 'package.json'));
const ts = require('typescript');
const sdkPackage = JSON.parse(fs.readFileSync(path.join(sdkRoot, 'package.json'), 'utf8'));

// Method, path (as the emulator routes it), SDK resource file and the method that calls it.
const ENDPOINTS = [
  ['POST', '/v1/customers', 'Customers', 'create'],
  ['POST', '/v1/customers/{id}', 'Customers', 'update'],
  ['GET', '/v1/customers', 'Customers', 'list'],
  ['GET', '/v1/customers/search', 'Customers', 'search'],
  ['GET', '/v1/customers/{id}', 'Customers', 'retrieve'],
  ['DELETE', '/v1/customers/{id}', 'Customers', 'del'],
  ['POST', '/v1/accounts', 'Accounts', 'create'],
  ['POST', '/v1/accounts/{id}', 'Accounts', 'update'],
  ['GET', '/v1/accounts', 'Accounts', 'list'],
  ['GET', '/v1/accounts/{id}', 'Accounts', 'retrieve'],
  ['DELETE', '/v1/accounts/{id}', 'Accounts', 'del'],
  ['POST', '/v1/account_links', 'AccountLinks', 'create'],
  ['GET', '/v1/events', 'Events', 'list'],
  ['GET', '/v1/events/{id}', 'Events', 'retrieve'],
  ['POST', '/v2/core/accounts', 'V2/Core/Accounts', 'create'],
  ['POST', '/v2/core/accounts/{id}', 'V2/Core/Accounts', 'update'],
  ['GET', '/v2/core/accounts', 'V2/Core/Accounts', 'list'],
  ['GET', '/v2/core/accounts/{id}', 'V2/Core/Accounts', 'retrieve'],
  ['POST', '/v2/core/accounts/{id}/close', 'V2/Core/Accounts', 'close'],
  ['POST', '/v2/core/account_links', 'V2/Core/AccountLinks', 'create'],
  ['GET', '/v2/core/events', 'V2/Core/Events', 'list'],
  ['GET', '/v2/core/events/{id}', 'V2/Core/Events', 'retrieve'],
];

// What the SDK's v2 types leave out, by endpoint and parameter path.
const V2_ADDITIONS = {
  // The v2 list endpoints take a `page` token: Stripe's reference lists it ("page (string,
  // optional) The page token to navigate to next or previous batch of accounts given by the
  // list request", https://docs.stripe.com/api/v2/core/accounts/list), but the SDK never passes
  // it as a parameter: it follows `next_page_url`, which carries it (esm/autoPagination.js,
  // V2ListIterator).
  'GET /v2/core/accounts': { page: { type: ['string'] } },
  'GET /v2/core/events': {
    page: { type: ['string'] },
    // The SDK types `created` as its shared RangeQueryParam (numbers); Stripe's OpenAPI spec
    // gives the bounds as `date-time` strings (RFC 3339), as every v2 timestamp is. Both shapes
    // are listed; the emulator reads either.
    'created[gt]': { type: ['number', 'string'] },
    'created[gte]': { type: ['number', 'string'] },
    'created[lt]': { type: ['number', 'string'] },
    'created[lte]': { type: ['number', 'string'] },
  },
};

// The file declaring the thin event types, `interface ... extends EventBase { type: '...' }`.
const V2_EVENTS_FILE = 'V2/Core/Events';

// The `code` values an API error can carry: the OpenAPI enum of `api_errors.code`, which the
// SDK types as the code of a PaymentIntent's last payment error.
const ERROR_CODES = ['PaymentIntents', ['PaymentIntent', 'LastPaymentError', 'Code']];

const esm = path.join(sdkRoot, 'esm');
const resourceFile = (name, ext) => path.join(esm, 'resources', `${name}${ext}`);

const apiVersion = readApiVersion();
const program = ts.createProgram(
  [
    ...new Set(ENDPOINTS.map(([, , file]) => resourceFile(file, '.d.ts'))),
    resourceFile(ERROR_CODES[0], '.d.ts'),
    resourceFile(V2_EVENTS_FILE, '.d.ts'),
  ],
  { strict: true, noEmit: true, target: ts.ScriptTarget.ES2022, moduleResolution: ts.ModuleResolutionKind.Node10 },
);
const checker = program.getTypeChecker();

const endpoints = {};
for (const [method, routePath, file, sdkMethod] of ENDPOINTS) {
  checkSdkCallsPath(file, sdkMethod, method, routePath);
  const paramsType = paramsTypeOf(file, sdkMethod);
  const spec = new Map();
  describeObject(paramsType, '', spec, []);
  const name = `${method} ${routePath}`;
  for (const [at, added] of Object.entries(V2_ADDITIONS[name] ?? {})) {
    const entry = spec.get(at) ?? { type: new Set(), enum: new Set(), emptyable: false, free_form: false, required: false };
    for (const kind of added.type) entry.type.add(kind);
    spec.set(at, entry);
  }
  endpoints[name] = spec;
}
for (const name of Object.keys(V2_ADDITIONS)) {
  if (!endpoints[name]) throw new Error(`V2_ADDITIONS names ${name}, which is not in ENDPOINTS`);
}

const v2EventTypes = thinEventTypes();

const errorCodes = stringLiterals(typeOfAlias(ERROR_CODES[0], ERROR_CODES[1]));

const outDir = path.dirname(fileURLToPath(import.meta.url));
const outFile = path.join(outDir, `${apiVersion}.json`);
fs.writeFileSync(outFile, render());
console.log(`${apiVersion}: wrote ${path.relative(process.cwd(), outFile)} (stripe ${sdkPackage.version})`);

// ---------------------------------------------------------------------------------------

function readApiVersion() {
  // `export declare const ApiVersion = "2026-10-28.endive";`
  const file = path.join(esm, 'apiVersion.d.ts');
  const source = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  let version;
  source.forEachChild(function visit(node) {
    if (ts.isVariableDeclaration(node) && node.name.getText() === 'ApiVersion') {
      version = node.initializer?.text;
    }
    node.forEachChild(visit);
  });
  if (!/^\d{4}-\d{2}-\d{2}\.[a-z]+$/.test(version ?? '')) {
    throw new Error(`no ApiVersion in ${file}`);
  }
  return version;
}

/** The SDK's JavaScript must send `sdkMethod` as `method path` (among others: `accounts.retrieve`
 * without an id reads the platform's own account): guards the table above. */
function checkSdkCallsPath(file, sdkMethod, method, routePath) {
  const jsFile = resourceFile(file, '.js');
  const source = ts.createSourceFile(jsFile, fs.readFileSync(jsFile, 'utf8'), ts.ScriptTarget.ES2022, true);
  const calls = [];
  source.forEachChild(function visit(node) {
    if (ts.isMethodDeclaration(node) && node.name.getText() === sdkMethod) {
      node.forEachChild(function findCall(inner) {
        if (ts.isCallExpression(inner) && inner.expression.getText() === 'this._makeRequest') {
          const [verb, target] = inner.arguments;
          calls.push(`${verb.text} ${requestPath(target)}`);
        }
        inner.forEachChild(findCall);
      });
    }
    node.forEachChild(visit);
  });
  if (!calls.includes(`${method} ${routePath}`)) {
    throw new Error(`${file}.${sdkMethod} sends ${JSON.stringify(calls)}, not ${method} ${routePath}`);
  }
}

/** `/v1/customers/${encodeURIComponent(id)}` -> `/v1/customers/{id}` */
function requestPath(node) {
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text;
  if (ts.isTemplateExpression(node)) {
    return node.head.text + node.templateSpans.map((span) => '{id}' + span.literal.text).join('');
  }
  throw new Error(`unexpected request path ${node.getText()}`);
}

/** The type of the `params` argument of the resource class's method `sdkMethod`. */
function paramsTypeOf(file, sdkMethod) {
  const source = program.getSourceFile(resourceFile(file, '.d.ts'));
  let found;
  source.forEachChild(function visit(node) {
    if (ts.isClassDeclaration(node)) {
      for (const member of node.members) {
        if (ts.isMethodDeclaration(member) && member.name.getText() === sdkMethod) {
          const params = member.parameters.find((p) => p.name.getText() === 'params');
          if (params) found = checker.getTypeAtLocation(params.type);
        }
      }
    }
  });
  if (!found) throw new Error(`no ${sdkMethod}(params) in ${file}.d.ts`);
  return found;
}

/** The type named by a dotted path of namespaces ending in a type alias. */
function typeOfAlias(file, names) {
  const source = program.getSourceFile(resourceFile(file, '.d.ts'));
  let scope = source.statements;
  for (const [i, name] of names.entries()) {
    const last = i === names.length - 1;
    const decl = scope.find(
      (s) => (last ? ts.isTypeAliasDeclaration(s) : ts.isModuleDeclaration(s)) && s.name.getText() === name,
    );
    if (!decl) throw new Error(`no ${names.join('.')} in ${file}.d.ts`);
    if (last) return checker.getTypeAtLocation(decl.name);
    scope = decl.body.statements;
  }
}

/** The SDK's `Decimal` (esm/Decimal.d.ts), which v2 sends as a decimal string. */
function isDecimal(type) {
  const symbol = type.aliasSymbol ?? type.getSymbol();
  const declaration = symbol?.declarations?.[0];
  return symbol?.getName() === 'Decimal' && declaration?.getSourceFile().fileName.endsWith('Decimal.d.ts');
}

/** Every `type: '...'` of an interface extending `EventBase` in the v2 events file, sorted. */
function thinEventTypes() {
  const source = program.getSourceFile(resourceFile(V2_EVENTS_FILE, '.d.ts'));
  const types = new Set();
  source.forEachChild((node) => {
    if (!ts.isInterfaceDeclaration(node)) return;
    const extendsBase = (node.heritageClauses ?? []).some((clause) =>
      clause.types.some((t) => t.expression.getText() === 'EventBase'),
    );
    if (!extendsBase) return;
    for (const member of node.members) {
      if (ts.isPropertySignature(member) && member.name.getText() === 'type' && member.type) {
        const literal = checker.getTypeAtLocation(member.type);
        if (literal.flags & ts.TypeFlags.StringLiteral) types.add(literal.value);
      }
    }
  });
  if (types.size === 0) throw new Error(`no thin event types in ${V2_EVENTS_FILE}.d.ts`);
  return [...types].sort();
}

function stringLiterals(type) {
  return members(type)
    .filter((t) => t.flags & ts.TypeFlags.StringLiteral)
    .map((t) => t.value)
    .sort();
}

function members(type) {
  return type.isUnion() ? type.types : [type];
}

/** Records the properties of an object type under `prefix` (the top level when empty). */
function describeObject(type, prefix, spec, stack) {
  if (stack.includes(type)) throw new Error(`recursive parameter type at ${prefix}`);
  for (const property of checker.getPropertiesOfType(type)) {
    const name = property.getName();
    const at = prefix ? `${prefix}[${name}]` : name;
    const declaration = property.valueDeclaration ?? property.declarations[0];
    const required = !(property.flags & ts.SymbolFlags.Optional);
    describe(checker.getTypeOfSymbolAtLocation(property, declaration), at, spec, [...stack, type], required);
  }
}

/** Records the parameter at path `at` of type `type` and everything below it. */
function describe(type, at, spec, stack, required) {
  // A path reached through several members of a union (`external_account`) is required only
  // if every member requires it.
  const entry = spec.get(at) ?? { type: new Set(), enum: new Set(), emptyable: false, free_form: false, required };
  entry.required &&= required;
  spec.set(at, entry);
  const objects = [];
  const elements = [];
  for (const t of members(type)) {
    const flags = t.flags;
    if (flags & ts.TypeFlags.Undefined) continue;
    if (flags & ts.TypeFlags.Null) {
      // `Emptyable<T>` is `null | '' | T`: on the wire, both are an empty value.
      entry.emptyable = true;
    } else if (flags & ts.TypeFlags.StringLiteral) {
      if (t.value === '') {
        entry.emptyable = true;
      } else {
        entry.type.add('string');
        entry.enum.add(t.value);
      }
    } else if (flags & ts.TypeFlags.String) {
      entry.type.add('string');
    } else if (flags & ts.TypeFlags.Intersection && t.types.some((part) => part.flags & ts.TypeFlags.String)) {
      // `OtherString`: the SDK's way of leaving enums open to values added later.
      entry.type.add('string');
    } else if (isDecimal(t)) {
      // v2's `decimal_string`: the SDK's Decimal class, sent as a JSON string ("12.5").
      entry.type.add('string');
    } else if (flags & (ts.TypeFlags.Boolean | ts.TypeFlags.BooleanLiteral)) {
      entry.type.add('boolean');
    } else if (flags & (ts.TypeFlags.Number | ts.TypeFlags.NumberLiteral)) {
      entry.type.add('number');
    } else if (checker.isArrayType(t)) {
      entry.type.add('array');
      elements.push(checker.getTypeArguments(t)[0]);
    } else if (flags & ts.TypeFlags.Object) {
      entry.type.add('hash');
      objects.push(t);
    } else {
      throw new Error(`unhandled type at ${at}: ${checker.typeToString(t)}`);
    }
  }
  for (const object of objects) {
    const properties = checker.getPropertiesOfType(object);
    if (checker.getIndexInfosOfType(object).length > 0) {
      if (properties.length > 0) throw new Error(`hash with both fixed and free keys at ${at}`);
      entry.free_form = true;
    } else {
      describeObject(object, at, spec, stack);
    }
  }
  for (const element of elements) {
    describe(element, `${at}[]`, spec, stack, false);
  }
}

/** One parameter per line, sorted, so a moved pin shows as a readable diff. */
function render() {
  const lines = [];
  lines.push('{');
  lines.push(`  "api_version": ${JSON.stringify(apiVersion)},`);
  lines.push(
    `  "generated_from": ${JSON.stringify(`stripe ${sdkPackage.version} (npm), TypeScript definitions; by params/generate.mjs, do not edit`)},`,
  );
  lines.push(`  "error_codes": ${JSON.stringify(errorCodes)},`);
  lines.push(`  "v2_event_types": ${JSON.stringify(v2EventTypes)},`);
  lines.push('  "endpoints": {');
  const endpointNames = Object.keys(endpoints);
  endpointNames.forEach((name, i) => {
    const entries = [...endpoints[name].entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    lines.push(`    ${JSON.stringify(name)}: {`);
    entries.forEach(([at, entry], j) => {
      const out = { type: [...entry.type].sort() };
      if (entry.enum.size > 0) out.enum = [...entry.enum].sort();
      if (entry.emptyable) out.emptyable = true;
      if (entry.free_form) out.free_form = true;
      if (entry.required) out.required = true;
      lines.push(`      ${JSON.stringify(at)}: ${JSON.stringify(out)}${j < entries.length - 1 ? ',' : ''}`);
    });
    lines.push(`    }${i < endpointNames.length - 1 ? ',' : ''}`);
  });
  lines.push('  }');
  lines.push('}');
  return lines.join('\n') + '\n';
}
