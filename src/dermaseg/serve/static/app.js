// dermaseg web page: send the chosen image to POST /v1/segment, draw the contour, list the
// measurements with their meaning, offer the mask, the overlay and the measurements (JSON,
// CSV) as downloads. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

// The ABCD reference colours of dermaseg.infer.measure, as words.
const COLOUR_WORDS = { white: "white", red: "red", light_brown: "light brown",
  dark_brown: "dark brown", blue_gray: "blue-grey", black: "black" };
const colourWord = (key) => COLOUR_WORDS[key] || key.replace(/_/g, " ");

// The rows of the measurements table: key (data-key and the legend), label, unit, the value
// (from the response r and its measurements m; null: row left out) and what it means (the
// row's tooltip and the legend). Definitions: dermaseg.infer.measure.
const ROWS = [
  ["area_mm2", "Area", "mm²", (r, m) => fixed(m.area_mm2, 2),
    "Lesion area: the number of lesion pixels times the pixel area."],
  ["area", "Area", "px", (r, m) => fixed(m.area, 0),
    "Lesion area as a number of pixels."],
  ["perimeter_mm", "Perimeter", "mm", (r, m) => fixed(m.perimeter_mm, 2),
    "Length of the lesion border (holes included), measured on the smoothed contour."],
  ["perimeter", "Perimeter", "px", (r, m) => fixed(m.perimeter, 0),
    "Length of the lesion border (holes included), in pixel widths."],
  ["max_diameter_mm", "Max diameter", "mm", (r, m) => fixed(m.max_diameter_mm, 2),
    "Largest distance between two points of the lesion (maximum Feret diameter): the D of " +
    "the ABCD rule."],
  ["max_diameter", "Max diameter", "px", (r, m) => fixed(m.max_diameter, 0),
    "Largest distance between two points of the lesion (maximum Feret diameter), in pixel " +
    "widths."],
  ["area_fraction", "Share of the image", "%", (r) => fixed(100 * r.area_fraction, 1),
    "Lesion pixels as a percentage of all the image's pixels."],
  ["asymmetry", "Asymmetry", "0–1", (r, m) => fixed(m.asymmetry, 2),
    "Share of the lesion not covered by its mirror image, mirrored about each of its two " +
    "principal axes and averaged: 0 symmetric, higher more asymmetric (the A of ABCD)."],
  ["border_irregularity", "Border irregularity", "≥ 1", (r, m) => fixed(m.border_irregularity, 2),
    "Perimeter² / (4π × area): 1 for a circle, higher for a ragged or elongated border " +
    "(the B of ABCD; the inverse of compactness)."],
  ["compactness", "Compactness", "0–1", (r, m) => fixed(m.compactness, 2),
    "4π × area / perimeter²: 1 for a circle, lower for an elongated or ragged border."],
  ["solidity", "Solidity", "0–1", (r, m) => fixed(m.solidity, 2),
    "Area / area of the convex hull (the lesion with its notches filled): 1 for a convex " +
    "lesion, lower for a notched border."],
  ["colors", "Colours", "", (r, m) => colourList(m),
    "ABCD reference colours (white, red, light brown, dark brown, blue-grey, black) that " +
    "each cover at least 5 % of the lesion, with their share; each lesion pixel counts for " +
    "the nearest reference colour in RGB. A rough guide: not validated against a " +
    "dermatologist's reading."],
  ["color_count", "Colour count", "of 6", (r, m) => fixed(m.color_count, 0),
    "How many reference colours are present (the C of ABCD)."],
  ["color_spread", "Colour spread", "0–1", (r, m) => fixed(m.color_spread, 3),
    "Standard deviation of the lesion's colours (mean over red, green and blue, on a 0–1 " +
    "scale): colour variegation, whatever the reference colours."],
  ["size", "Image", "px", (r) => `${r.width} × ${r.height}`,
    "Image width × height in pixels (after its EXIF orientation)."],
  ["inference_ms", "Inference", "ms", (r) => fixed(r.inference_ms, 0),
    "Model time: preprocessing, network and resizing the mask back to the image."],
];

// A number with `digits` decimals; null for a missing value (the row is left out).
function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : null;
}

function colourList(m) {
  if (!m.colors) return null;
  if (!m.colors.length) return "none";
  const share = (name) => Math.round(100 * ((m.color_fractions || {})[name] || 0));
  return m.colors.map((name) => `${colourWord(name)} ${share(name)} %`).join(", ");
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// What is on show: the decoded photo and mask (kept to redraw when "Tint" changes) and the
// response. Only the latest choice's result is ever shown.
let shown = null;

function forget(view) {
  if (!view) return;
  if (view.bitmap) view.bitmap.close();
  if (view.mask) view.mask.close();
}

// The canvas always has the size the server reports (after its EXIF rotation). The photo goes
// under the contour only when the browser decoded it to that same size; otherwise (a format it
// cannot decode, such as TIFF, or an orientation it did not apply, such as WebP's) the mask is
// drawn faintly on a blank canvas instead. The lesion is tinted only when "Tint" is ticked, so
// that its own colours can be judged. Returns whether the photo was drawn.
function drawResult({ bitmap, mask, result }) {
  const canvas = $("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  const ctx = canvas.getContext("2d");
  const photo = bitmap !== null && bitmap.width === result.width && bitmap.height === result.height;
  if (photo) {
    ctx.drawImage(bitmap, 0, 0);
  } else if (mask) {
    ctx.globalAlpha = 0.35;
    ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
  if ($("band").checked) drawBand(ctx, result.quality.uncertain_band, canvas);
  const points = result.contour;
  if (points.length > 2) {
    tracePath(ctx, points);
    if ($("fill").checked) {
      ctx.fillStyle = "rgba(0, 255, 120, 0.15)";
      ctx.fill();
    }
    ctx.lineWidth = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 250));
    ctx.strokeStyle = "#00ff78";
    ctx.stroke();
  }
  canvas.dataset.contourPoints = String(points.length);
  offerOverlay(canvas);
  return photo;
}

function tracePath(ctx, points) {
  ctx.beginPath();
  ctx.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
  ctx.closePath();
}

// The uncertain border: the contours of probability 0.2 and 0.8, dashed, in Okabe-Ito orange.
function drawBand(ctx, band, canvas) {
  const width = Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 400));
  ctx.save();
  ctx.setLineDash([4 * width, 3 * width]);
  ctx.lineWidth = width;
  ctx.strokeStyle = "#E69F00";
  for (const points of [band.outer, band.inner]) {
    if (points.length > 2) {
      tracePath(ctx, points);
      ctx.stroke();
    }
  }
  ctx.restore();
}

// The estimated Jaccard and, when the mask needs a human look, why, above the picture.
function showQuality(result) {
  const quality = result.quality;
  const review = $("review");
  review.hidden = !quality.review;
  review.textContent = quality.review ? `Review recommended: ${quality.reasons.join("; ")}.` : "";
  const estimate = quality.estimated_jaccard;
  $("quality").textContent = estimate === null
    ? "No estimate: this model was not calibrated (dermaseg calibrate)."
    : `Estimated Jaccard (overlap with an expert's outline, 0 to 1): ${estimate.toFixed(2)}` +
      (quality.review ? "" : ", no review needed.");
}

function showMeasurements(result) {
  const table = $("measurements");
  const legend = $("legend");
  table.replaceChildren();
  legend.replaceChildren();
  const m = result.measurements;
  for (const [key, label, unit, get, help] of ROWS) {
    const value = get(result, m);
    if (value === null || value === undefined) continue;
    const row = table.insertRow();
    row.dataset.key = key;
    row.title = help;
    row.insertCell().textContent = label;
    row.insertCell().textContent = value;
    row.insertCell().textContent = unit;
    const term = document.createElement("dt");
    term.textContent = unit ? `${label} (${unit})` : label;
    const meaning = document.createElement("dd");
    meaning.textContent = help;
    legend.append(term, meaning);
  }
  if (m.empty) table.insertRow().insertCell().textContent = "No lesion found";
  const model = result.model;
  $("model").textContent = `Made by ${model.name}, ${model.precision.toUpperCase()}, ` +
    `${model.backend} (${model.file}, dermaseg ${model.version})`;
}

// ---- downloads -------------------------------------------------------------------------------

function offer(id, blob, filename) {
  const link = $(id);
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = filename;
}

const stem = (filename) => filename.replace(/\.[^.]*$/, "");

function maskBlob(result) {
  const bytes = Uint8Array.from(atob(result.mask_png_base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

// The canvas as drawn (photo, contour and tint if ticked).
function offerOverlay(canvas) {
  const name = `${stem(shown.name)}_overlay.png`;
  const view = shown;
  canvas.toBlob((blob) => { if (blob && view === shown) offer("download-overlay", blob, name); },
    "image/png");
}

function offerDownloads(mask, result, filename) {
  const name = stem(filename);
  offer("download", mask, `${name}_segmentation.png`);
  const json = JSON.stringify(result.measurements, null, 2) + "\n";
  offer("download-json", new Blob([json], { type: "application/json" }),
    `${name}_measurements.json`);
  const record = { id: name, image: filename, ...result.measurements };
  offer("download-csv", new Blob([measurementsCsv(record)], { type: "text/csv" }),
    `${name}_measurements.csv`);
}

// One record as CSV, the table `dermaseg predict --measure` writes
// (dermaseg.infer.measure_table): nested values become columns of their own (bbox_x, ...,
// color_fractions_red, ..., centroid_x, mean_rgb_r), a list of names one cell.
const PARTS = { centroid: ["x", "y"], mean_rgb: ["r", "g", "b"] };

function flatten(row, key, value) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [inner, item] of Object.entries(value)) flatten(row, `${key}_${inner}`, item);
  } else if (Array.isArray(value)) {
    if (value.every((item) => typeof item === "string")) row[key] = value.join("; ");
    else if (PARTS[key] && value.length === PARTS[key].length) {
      PARTS[key].forEach((part, i) => { row[`${key}_${part}`] = value[i]; });
    }
  } else {
    row[key] = value;
  }
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  let text = String(value); // numbers in the shortest form that reads back the same
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(value)) text = "'" + text;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function measurementsCsv(record) {
  const row = {};
  for (const [key, value] of Object.entries(record)) flatten(row, key, value);
  const names = Object.keys(row);
  // As measure_table.columns: an empty value whose parts have columns of their own goes.
  const kept = names.filter((name) => (row[name] !== null && row[name] !== undefined)
    || !names.some((other) => other.startsWith(`${name}_`)));
  return kept.join(",") + "\n" + kept.map((name) => csvCell(row[name])).join(",") + "\n";
}

// ---- the request -----------------------------------------------------------------------------

// null when the browser cannot decode the image (e.g. TIFF in Chromium).
function decode(blob, options) {
  return createImageBitmap(blob, options).catch(() => null);
}

// The Options panel as the query string of /v1/segment (the same options as `predict`).
function options() {
  const query = new URLSearchParams();
  const size = $("pixel-size").value;
  if (size && Number(size) > 0) query.set("pixel_size_mm", size);
  for (const [id, name] of [["tta", "tta"], ["keep-largest", "keep_largest"], ["fill-holes", "fill_holes"]]) {
    if ($(id).checked) query.set(name, "true");
  }
  const area = Math.floor(Number($("min-area").value));
  if (area > 0) query.set("min_area", String(area));
  const text = query.toString();
  return text ? `?${text}` : "";
}

let latest = 0; // number of the latest choice: only its result is ever shown

async function post(file) {
  const body = new FormData();
  body.append("file", file, file.name);
  const headers = {};
  const token = $("token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/v1/segment${options()}`, { method: "POST", body, headers });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  return [response, data];
}

// On a narrow screen the result is below the fold: bring the picture into view.
function bringIntoView() {
  const box = $("canvas").getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) $("result").scrollIntoView({ block: "start" });
}

async function segment(file) {
  const request = ++latest;
  setStatus(`Segmenting ${file.name} …`);
  $("result").hidden = true;
  try {
    const [response, data] = await post(file);
    if (request !== latest) return;
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${data.detail}`, true);
      return;
    }
    // The server applied the EXIF orientation; createImageBitmap ("from-image") should too,
    // but Chromium does not for WebP: drawResult checks the size.
    const mask = maskBlob(data);
    const bitmap = await decode(file, { imageOrientation: "from-image" });
    const maskBitmap = await decode(mask);
    if (request !== latest) {
      forget({ bitmap, mask: maskBitmap });
      return;
    }
    window.dermasegResult = data; // handy in the browser console
    forget(shown);
    shown = { bitmap, mask: maskBitmap, result: data, name: file.name };
    $("note").hidden = drawResult(shown);
    showMeasurements(data);
    showQuality(data);
    offerDownloads(mask, data, file.name);
    $("result").hidden = false;
    setStatus(`${file.name}: done in ${data.inference_ms.toFixed(0)} ms`);
    bringIntoView();
  } catch (error) {
    if (request === latest) setStatus(`Could not show the result: ${error}`, true);
  }
}

$("fill").addEventListener("change", () => { if (shown) drawResult(shown); });
$("band").addEventListener("change", () => { if (shown) drawResult(shown); });
$("file").addEventListener("change", (event) => {
  if (event.target.files.length) segment(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) segment(event.dataTransfer.files[0]);
});
