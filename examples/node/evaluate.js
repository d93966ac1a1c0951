// One loss-and-gradient evaluation of an exported nst-onnx graph, from Node.js:
//   node evaluate.js GRAPH.onnx FEEDS_DIR OUT_DIR [node|wasm|webgpu] [repeats] [threads]
// (webgpu: onnxruntime-node's WebGPU provider, which needs a GPU adapter)
// FEEDS_DIR/feeds.json lists {name, shape, file} (raw little-endian float32); every output is
// written to OUT_DIR as NAME.bin with OUT_DIR/outputs.json ({name, dims}, seconds, version).
// scripts/runtimes.py writes the feeds and compares the outputs with onnxruntime in Python.
"use strict";
const fs = require("fs");
const path = require("path");

async function main() {
  const [graph, feedsDir, outDir, backend = "node", repeats = "3", threads = "2"] =
    process.argv.slice(2);
  const ort = require(backend === "wasm" ? "onnxruntime-web" : "onnxruntime-node");
  const options = {executionProviders: [{node: "cpu", wasm: "wasm", webgpu: "webgpu"}[backend]]};
  if (backend === "wasm") ort.env.wasm.numThreads = Number(threads);
  else options.intraOpNumThreads = Number(threads);
  const session = await ort.InferenceSession.create(fs.readFileSync(graph), options);
  const feeds = {};
  for (const f of JSON.parse(fs.readFileSync(path.join(feedsDir, "feeds.json"), "utf8"))) {
    const buf = fs.readFileSync(path.join(feedsDir, f.file));
    const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    feeds[f.name] = new ort.Tensor("float32", data, f.shape);
  }
  let out;
  const seconds = [];
  for (let i = 0; i <= Number(repeats); i++) {  // the first run warms up, untimed
    const t0 = process.hrtime.bigint();
    out = await session.run(feeds);
    if (i > 0) seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  fs.mkdirSync(outDir, {recursive: true});
  const outputs = [];
  for (const [name, t] of Object.entries(out)) {
    fs.writeFileSync(path.join(outDir, `${name}.bin`), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    outputs.push({name, dims: Array.from(t.dims)});
  }
  const versions = ort.env.versions || {};
  const version = (backend === "wasm" ? versions.web : versions.node) || versions.common || "?";
  fs.writeFileSync(path.join(outDir, "outputs.json"), JSON.stringify({outputs, seconds, version}));
}

main().catch((e) => { console.error(String(e.message || e).split("\n")[0]); process.exit(2); });
