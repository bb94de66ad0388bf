// Validates Kubernetes objects against their schemas, offline: reads a JSON
// array of objects on stdin (tests/k8s_manifest_test.py renders the
// overlays and converts them), prints one line per invalid or unknown
// object, exits 1 if there was any. kubernetes-models checks types, required
// fields and formats; it does not reject unknown fields.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const modules = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};
let bad = 0;
for (const obj of objects) {
  const where = `${obj.kind}/${obj.metadata?.name} (${obj.apiVersion})`;
  const path = modules[obj.apiVersion] ?? `kubernetes-models/${obj.apiVersion}`;
  let Model;
  try {
    Model = (await import(path))[obj.kind];
  } catch (e) {
    Model = undefined;
  }
  if (Model === undefined) {
    console.log(`${where}: no schema for this kind`);
    bad++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`${where}: ${e.message}`);
    bad++;
  }
}
console.log(`validated ${objects.length} objects, ${bad} invalid`);
process.exit(bad === 0 ? 0 : 1);
