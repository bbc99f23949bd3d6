// deploy_schema.mjs: validates Kubernetes objects against the API's OpenAPI schemas with the npm
// package kubernetes-models: its ajv validators check types, required fields and enums; they
// accept unknown fields (the API's schemas allow them; the API server drops them, or refuses
// them under strict field validation), so unknown fields are found here by walking each object
// along the package's TypeScript declarations (each field's declared type names the interface
// of its value). Reads a JSON array of objects on stdin; the folder holding
// node_modules/kubernetes-models is argv[2]. Prints one line per invalid object or unknown
// field and a summary; exits 1 when there is any, or an object of a kind the package lacks.
import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const nm = process.argv[2] + "/node_modules/";
const root = nm + "kubernetes-models/";

// The fields of the interface a .d.ts file declares: {field: [declared type, file of imports]}.
const decls = new Map();
function fieldsOf(file) {
  if (decls.has(file)) return decls.get(file);
  let fields = null;
  if (existsSync(file)) {
    const src = readFileSync(file, "utf8").replace(/\/\*\*[\s\S]*?\*\//g, "");
    const imports = {};
    for (const m of src.matchAll(/import \{ (\w+) \} from "([^"]+)"/g)) {
      const spec = m[2].replace(/\.js$/, "");
      imports[m[1]] = spec.startsWith(".") ? resolve(dirname(file), spec) + ".d.ts" : nm + spec + ".d.ts";
    }
    const body = src.match(/export interface \w+(?: extends [\w, ]+)? \{([\s\S]*?)\n\}/);
    if (body) {
      fields = {};
      for (const m of body[1].matchAll(/"([^"]+)"\??:\s*((?:[^;{]|\{[^}]*\})+);/g))
        fields[m[1]] = { type: m[2].trim(), imports };
    }
  }
  decls.set(file, fields);
  return fields;
}

// Reports fields of value that the interface in file does not declare, recursively.
function unknown(value, file, path, out) {
  const fields = fieldsOf(file);
  if (!fields || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    const f = fields[k];
    if (!f) { out.push(`${path}.${k}`); continue; }
    const ident = (f.type.match(/IIoK8s\w+/) || [])[0];
    const sub = ident && f.imports[ident];
    if (!sub) continue;
    if (/^Array</.test(f.type) && Array.isArray(v)) v.forEach((x, i) => unknown(x, sub, `${path}.${k}[${i}]`, out));
    else if (/^\{\s*\[key: string\]/.test(f.type)) for (const [kk, x] of Object.entries(v || {})) unknown(x, sub, `${path}.${k}.${kk}`, out);
    else unknown(v, sub, `${path}.${k}`, out);
  }
}
const objs = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const o of objs) {
  const what = `${o.apiVersion} ${o.kind} ${o.metadata?.name}`;
  let Model;
  try {
    const mod = await import(pathToFileURL(`${root}${o.apiVersion}/${o.kind}.js`).href);
    Model = mod[o.kind];
  } catch (e) {
    console.log(`INVALID ${what}: kind not modelled (${e.code || e.message})`);
    bad++;
    continue;
  }
  try {
    new Model(o).validate();
  } catch (e) {
    console.log(`INVALID ${what}: ${e.message.slice(0, 400)}`);
    bad++;
  }
  const out = [];
  unknown(o, `${root}${o.apiVersion}/${o.kind}.d.ts`, "", out);
  for (const p of out) console.log(`UNKNOWN FIELD ${what}: ${p}`);
  bad += out.length;
}
console.log(`schema: ${objs.length} objects, ${bad} invalid or unknown fields`);
process.exit(bad ? 1 : 0);
