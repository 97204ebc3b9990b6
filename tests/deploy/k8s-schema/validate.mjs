// Validates Kubernetes objects against the API's OpenAPI schemas bundled in
// the kubernetes-models package (no cluster, no network). Reads a JSON array
// of {file, object} from stdin; prints one line per object; exits 1 if any
// object is invalid or of a kind it has no schema for.
import { readFileSync } from "node:fs";

const items = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const { file, object } of items) {
  const where = `${file}: ${object.kind}/${object.metadata?.name}`;
  // "apps/v1" -> kubernetes-models/apps/v1/<Kind>; core "v1" -> kubernetes-models/v1/<Kind>.
  const module = `kubernetes-models/${object.apiVersion}/${object.kind}`;
  let Model;
  try {
    Model = (await import(module))[object.kind];
  } catch (error) {
    console.log(`INVALID ${where}: no schema for ${object.apiVersion} ${object.kind} (${error.code ?? error.message})`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`valid   ${where} (${object.apiVersion})`);
  } catch (error) {
    console.log(`INVALID ${where}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
