// Reads a JSON array of Flux scripts on stdin; prints a JSON array: for each, true when it is valid Flux
// (syntax, types and the standard library's function signatures, as the Flux language server checks them).
const flux = require("@influxdata/flux-lsp-node");

let input = "";
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const scripts = JSON.parse(input);
  process.stdout.write(JSON.stringify(scripts.map((s) => flux.is_valid_flux(s))));
});
