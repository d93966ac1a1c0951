// A stylisation from Node.js with nst-onnx's exported graphs alone (no Python):
//   node stylize.js MODEL_DIR CONTENT.png STYLE.png OUT.png [iterations=100]
// MODEL_DIR is what `nst export` wrote (manifest.json + the .onnx files); the pictures are
// used at their own sizes (resize them first). Targets come from features.onnx, the loss
// and gradient from loss.onnx, each step from adam_step.onnx; manifest.json's "binding" says
// how nst fills the inputs. Prints one JSON line: first and best loss, iterations, seconds.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const ort = require("onnxruntime-node");
const {PNG} = require("pngjs");

const FORMAT = 7;  // the manifest format this program reads (nst_onnx/graphs/export.py)

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

function readManifest(dir) {
  let m;
  try { m = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")); }
  catch (e) { fail(`${dir} holds no readable manifest.json (run: nst export)`); }
  if (m.format !== FORMAT)
    fail(`${dir} is model format ${m.format}; this program reads ${FORMAT} (run: nst export --rebuild)`);
  if (!m.binding) fail(`${dir}'s manifest has no binding: an older export (run: nst export --rebuild)`);
  if (m.guided) fail("a guided model (masks) is not supported here");
  return m;
}

async function session(dir, manifest, file) {
  const data = fs.readFileSync(path.join(dir, file));
  const want = (manifest.files[file] || {}).sha256;
  if (crypto.createHash("sha256").update(data).digest("hex") !== want)
    fail(`${file} differs from its manifest (run: nst export --rebuild)`);
  return ort.InferenceSession.create(data, {executionProviders: ["cpu"]});
}

function readImage(file) {
  let png;
  try { png = PNG.sync.read(fs.readFileSync(file)); }
  catch (e) { fail(`${file}: not a readable PNG`); }
  const {width: w, height: h, data} = png;
  const x = new Float32Array(3 * h * w);
  for (let i = 0; i < h * w; i++)
    for (let c = 0; c < 3; c++) x[c * h * w + i] = data[4 * i + c];
  return new ort.Tensor("float32", x, [1, 3, h, w]);
}

function writeImage(file, x) {
  const [, , h, w] = x.dims;
  const png = new PNG({width: w, height: h});
  for (let i = 0; i < h * w; i++) {
    for (let c = 0; c < 3; c++)
      png.data[4 * i + c] = Math.max(0, Math.min(255, Math.round(x.data[c * h * w + i])));
    png.data[4 * i + 3] = 255;
  }
  const tmp = `${file}.${process.pid}.tmp`;  // whole or not at all
  fs.writeFileSync(tmp, PNG.sync.write(png));
  fs.renameSync(tmp, file);
}

const scalar = (v) => new ort.Tensor("float32", Float32Array.of(v), []);
const vector = (a) => new ort.Tensor("float32", Float32Array.from(a), [a.length]);

function fixedInputs(manifest, contentFeats, styleFeats, h, w) {
  const b = manifest.binding, feeds = {};
  for (const n of manifest.content_layers) feeds[`target_${n}`] = contentFeats[`features_${n}`];
  for (const n of manifest.style_layers) feeds[`target_gram_${n}`] = styleFeats[`gram_${n}`];
  feeds.content_weights = vector(manifest.content_layers.map(() => b.content_weights.each));
  feeds.style_weights = vector(manifest.style_layers.map(() => b.style_weights.each));
  feeds.tv_weight = scalar(b.tv_weight.value * b.tv_weight.reference_pixels / (h * w));
  feeds.inv_sizes = vector(b.inv_sizes.layers.map(
    (l) => 1 / (l.channels * (h >> l.downsampling) * (w >> l.downsampling))));
  return feeds;
}

async function main() {
  const [dir, contentFile, styleFile, outFile, iters = "100"] = process.argv.slice(2);
  if (!outFile) fail("usage: node stylize.js MODEL_DIR CONTENT.png STYLE.png OUT.png [iterations]");
  const iterations = Number(iters);
  if (!(iterations >= 1)) fail("iterations must be a number ≥ 1");
  const manifest = readManifest(dir);
  const content = readImage(contentFile), style = readImage(styleFile);
  const [, , h, w] = content.dims;
  const t0 = process.hrtime.bigint();
  const features = await session(dir, manifest, "features.onnx");
  const fixed = fixedInputs(manifest, await features.run({image: content}),
                            await features.run({image: style}), h, w);
  const loss = await session(dir, manifest, "loss.onnx");
  const adam = await session(dir, manifest, "adam_step.onnx");
  const a = manifest.binding.adam;
  const coef = {lr: scalar(a.lr), beta1: scalar(a.beta1), beta2: scalar(a.beta2), eps: scalar(a.eps)};
  let x = content;  // binding.init
  let m = new ort.Tensor("float32", new Float32Array(3 * h * w), content.dims);
  let v = new ort.Tensor("float32", new Float32Array(3 * h * w), content.dims);
  let first = null, best = {loss: Infinity, x: content};
  for (let k = 1; k <= iterations + 1; k++) {
    const out = await loss.run({...fixed, image: x});
    const f = out.loss.data[0];
    if (!Number.isFinite(f)) fail(`the loss is not finite at iteration ${k}`);
    if (first === null) first = f;
    if (f < best.loss) best = {loss: f, x};
    if (k > iterations) break;  // the last step's loss counts, as in nst
    const s = await adam.run({x, g: out.grad, m, v, ...coef, step: scalar(k)});
    x = s.x_new; m = s.m_new; v = s.v_new;
  }
  writeImage(outFile, best.x);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({first_loss: first, best_loss: best.loss, iterations, seconds}));
}

main().catch((e) => fail(String(e.message || e).split("\n")[0]));
