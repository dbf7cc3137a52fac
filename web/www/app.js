// The page: decode a scan, run the engine on this machine's GPU (WebGPU),
// show the map, the candidates and the decision at a threshold. Nothing
// leaves the machine: the only requests are for the page's own files.
import init, { Engine, Scan, image_score, probability_png, mask_png, overlay_rgba } from './pkg/engine_web.js';

const $ = (id) => document.getElementById(id);
const state = { engine: null, model: null, scan: null, name: '', map: null, score: 0, candidates: [] };

const status = (text) => { $('status').textContent = text; };
const fail = (text) => { $('error').textContent = text; status(''); };
const message = (e) => (e && e.message) ? e.message : String(e);

async function start() {
  if (!navigator.gpu) {
    fail('This browser has no WebGPU, which the page needs to run the network on your GPU. ' +
         'Use a recent Chrome or Edge (or Firefox or Safari with WebGPU turned on), ' +
         'or run `engine infer` on your computer.');
    return false;
  }
  await init();
  try {
    state.engine = await Engine.open();
  } catch (e) {
    fail(`No WebGPU adapter could be opened: ${message(e)}. Check that WebGPU is enabled ` +
         'and the GPU driver is up to date, or run `engine infer`.');
    return false;
  }
  status(`GPU: ${state.engine.adapter()}. Loading the bundled model…`);
  try {
    const manifest = await (await fetch('model/manifest.json')).json();
    const files = await Promise.all(manifest.files.map(async (f) =>
      new Uint8Array(await (await fetch(`model/${f}`)).arrayBuffer())));
    useModel(manifest.files, files, `${manifest.name} (bundled)`);
  } catch (e) {
    fail(`The bundled model could not be loaded: ${message(e)}. Choose a .safetensors file.`);
    return false;
  }
  status(`GPU: ${state.engine.adapter()}. Ready: drop a mammogram.`);
  return true;
}

function useModel(names, files, label) {
  state.model = JSON.parse(state.engine.load_model(names, files));
  $('model-name').textContent = label;
  const mm = state.model.data_mm;
  $('spacing-hint').textContent = mm
    ? `(for files whose header declares none; empty: ${mm} mm, the model's training data; the network runs at ${state.model.model_mm} mm)`
    : '(this model runs at the scan\'s own pixels)';
}

// Decodes and analyses one file; returns the probability map.
async function analyse(name, bytes) {
  $('error').textContent = '';
  let scan;
  try {
    scan = Scan.decode(name, bytes);
  } catch (e) {
    fail(message(e));
    throw e;
  }
  state.scan = scan;
  state.name = name.replace(/\.[^.]*$/, '');
  state.map = null;
  drawGrey(scan);
  // Spacing: the file's header (DICOM) first, else the field, else (empty)
  // the model's training data's: `engine infer`'s order.
  const typed = parseFloat($('spacing').value);
  const spacing = Number.isFinite(typed) ? typed : undefined;
  const fromHeader = scan.pixel_spacing;
  const tta = $('tta').value;
  const started = performance.now();
  const bar = $('progress');
  let passes = '';
  const show = () => status(
    `Running the network on ${scan.width} x ${scan.height}` +
    (fromHeader ? ` (${fromHeader.toFixed(3)} mm per pixel from the DICOM header)` : '') +
    ` on ${state.engine.adapter()}… ${passes}${((performance.now() - started) / 1000).toFixed(0)} s`);
  const tick = setInterval(show, 500);
  bar.value = 0;
  bar.hidden = false;
  try {
    state.map = await state.engine.run(scan, spacing, tta, (done, total) => {
      bar.max = total;
      bar.value = done;
      passes = `pass ${done} of ${total} done, `;
      show();
    });
  } catch (e) {
    fail(`${name}: ${message(e)}`);
    throw e;
  } finally {
    clearInterval(tick);
    bar.hidden = true;
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  state.score = image_score(state.map);
  state.candidates = JSON.parse(state.engine.candidates(scan, state.map, spacing));
  const overlay = overlay_rgba(scan, state.map);
  $('scan').getContext('2d').putImageData(
    new ImageData(new Uint8ClampedArray(overlay.buffer), scan.width, scan.height), 0, 0);
  link('download-prob', probability_png(state.map, scan.width, scan.height), `${state.name}_prob.png`);
  redraw();
  status(`${name}: ${scan.width} x ${scan.height}, analysed in ${seconds} s on ${state.engine.adapter()}.`);
  return state.map;
}

function drawGrey(scan) {
  for (const id of ['scan', 'mask']) {
    $(id).width = scan.width;
    $(id).height = scan.height;
  }
  const grey = scan.pixels();
  const rgba = new Uint8ClampedArray(grey.length * 4);
  for (let i = 0; i < grey.length; i++) {
    rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = grey[i];
    rgba[4 * i + 3] = 255;
  }
  $('scan').getContext('2d').putImageData(new ImageData(rgba, scan.width, scan.height), 0, 0);
  $('mask').getContext('2d').clearRect(0, 0, scan.width, scan.height);
  $('result').textContent = '';
  $('candidates').textContent = '';
}

// The mask, the boxes and the decision at the threshold: no new run.
function redraw() {
  const t = parseFloat($('threshold').value);
  $('threshold-value').textContent = t.toFixed(2);
  const { scan, map } = state;
  if (!scan || !map) return;
  const ctx = $('mask').getContext('2d');
  const rgba = new Uint8ClampedArray(map.length * 4);
  for (let i = 0; i < map.length; i++) {
    if (map[i] > t) { rgba[4 * i] = 255; rgba[4 * i + 3] = 90; }
  }
  ctx.putImageData(new ImageData(rgba, scan.width, scan.height), 0, 0);
  const shown = state.candidates.filter((c) => c.score > t);
  ctx.strokeStyle = '#0ff';
  ctx.lineWidth = Math.max(1, Math.round(Math.max(scan.width, scan.height) / 300));
  for (const c of shown) {
    ctx.strokeRect(c.bbox[0], c.bbox[1], c.bbox[2] - c.bbox[0], c.bbox[3] - c.bbox[1]);
  }
  // `engine infer`'s rule: positive when more than 1/750 of the pixels
  // exceed the threshold, i.e. when the image score exceeds it.
  $('result').innerHTML = `Image score <b>${state.score.toFixed(3)}</b>: ` +
    (state.score > t
      ? `<b>positive</b> at ${t.toFixed(2)}: look at the ${shown.length} boxed region(s)`
      : `negative at ${t.toFixed(2)}`);
  $('candidates').textContent = shown.length
    ? 'Candidates: ' + shown.map((c) => `${c.score.toFixed(2)} at (${c.x.toFixed(0)}, ${c.y.toFixed(0)})`).join('; ')
    : '';
  link('download-mask', mask_png(map, scan.width, scan.height, t), `${state.name}_mask.png`);
}

function link(id, bytes, filename) {
  const a = $(id);
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'image/png' }));
  a.download = filename;
  a.setAttribute('aria-disabled', 'false');
}

async function openFile(file) {
  if (!file) return;
  try {
    await analyse(file.name, new Uint8Array(await file.arrayBuffer()));
  } catch (_) { /* shown on the page */ }
}

// A failure inside the engine (a panic traps the wasm; a GPU error) must
// not leave the page waiting: show it.
for (const event of ['error', 'unhandledrejection']) {
  window.addEventListener(event, (e) => {
    const why = globalThis.enginePanic || message(e.reason || e.error || e.message);
    fail(`The engine stopped: ${why}. Reload the page to try again.`);
  });
}

const ready = start();
$('file').addEventListener('change', (e) => openFile(e.target.files[0]));
$('threshold').addEventListener('input', redraw);
$('model').addEventListener('change', async (e) => {
  const chosen = [...e.target.files];
  if (!chosen.length || !state.engine) return;
  try {
    const files = await Promise.all(chosen.map(async (f) => new Uint8Array(await f.arrayBuffer())));
    useModel(chosen.map((f) => f.name), files, chosen.map((f) => f.name).join(', '));
    $('error').textContent = '';
  } catch (err) {
    fail(`That model could not be loaded: ${message(err)}`);
  }
});
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  openFile(e.dataTransfer.files[0]);
});

// For scripted use and the browser tests: wait for `ready`, then
// `analyse(name, bytes)` resolves to the map (a Float32Array).
window.engineApp = { ready, analyse, state };
