// deploy_schema.mjs: validates Kubernetes objects against the API's OpenAPI schemas with the npm
// package kubernetes-models (its ajv validators, which check types, required fields and enums;
// they do not reject unknown fields, which tests/deploy_k8s.py's field checks cover for the
// fields that matter). Reads a JSON array of objects on stdin; the folder holding
// node_modules/kubernetes-models is argv[2]. Prints one line per invalid object and a summary;
// exits 1 when any object is invalid or of a kind the package does not model.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const root = process.argv[2] + "/node_modules/kubernetes-models/";
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
}
console.log(`schema: ${objs.length} objects, ${bad} invalid`);
process.exit(bad ? 1 : 0);
