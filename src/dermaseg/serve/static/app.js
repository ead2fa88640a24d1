// dermaseg web page: send the chosen image to POST /v1/segment, draw the contour, list the
// measurements, offer the mask PNG. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const ROWS = [
  ["area_fraction", "Lesion area (fraction)", (r) => r.area_fraction.toFixed(4)],
  ["area", "Area (px)", (r) => r.measurements.area],
  ["area_mm2", "Area (mm²)", (r) => fmt(r.measurements.area_mm2)],
  ["perimeter", "Perimeter (px)", (r) => fmt(r.measurements.perimeter)],
  ["max_diameter", "Max diameter (px)", (r) => fmt(r.measurements.max_diameter)],
  ["max_diameter_mm", "Max diameter (mm)", (r) => fmt(r.measurements.max_diameter_mm)],
  ["asymmetry", "Asymmetry", (r) => fmt(r.measurements.asymmetry)],
  ["compactness", "Compactness", (r) => fmt(r.measurements.compactness)],
  ["solidity", "Solidity", (r) => fmt(r.measurements.solidity)],
  ["color_count", "Colours", (r) => colours(r.measurements)],
  ["size", "Image", (r) => `${r.width} × ${r.height}`],
  ["inference_ms", "Inference (ms)", (r) => r.inference_ms.toFixed(1)],
];

function fmt(value) {
  if (value === null || value === undefined) return null;
  return typeof value === "number" ? (Number.isInteger(value) ? value : value.toFixed(3)) : value;
}

function colours(m) {
  if (!m.colors) return null;
  return `${m.color_count} (${m.colors.join(", ")})`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// The canvas always has the size the server reports (after its EXIF rotation). The photo goes
// under the contour only when the browser decoded it to that same size; otherwise (a format it
// cannot decode, such as TIFF, or an orientation it did not apply, such as WebP's) the mask is
// drawn faintly on a blank canvas instead. Returns whether the photo was drawn.
function drawResult(bitmap, mask, result) {
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
  const points = result.contour;
  if (points.length > 2) {
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
    ctx.closePath();
    ctx.fillStyle = "rgba(0, 255, 120, 0.15)";
    ctx.fill();
    ctx.lineWidth = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 250));
    ctx.strokeStyle = "#00ff78";
    ctx.stroke();
  }
  canvas.dataset.contourPoints = String(points.length);
  return photo;
}

function showMeasurements(result) {
  const table = $("measurements");
  table.replaceChildren();
  for (const [key, label, get] of ROWS) {
    const value = get(result);
    if (value === null || value === undefined) continue;
    const row = table.insertRow();
    row.dataset.key = key;
    row.insertCell().textContent = label;
    row.insertCell().textContent = String(value);
  }
  if (result.measurements.empty) {
    const row = table.insertRow();
    row.insertCell().textContent = "No lesion found";
  }
  const m = result.model;
  $("model").textContent = `${m.name} (dermaseg ${m.version}, ${m.backend})`;
}

function maskBlob(result) {
  const bytes = Uint8Array.from(atob(result.mask_png_base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function offerMask(blob, filename) {
  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = filename.replace(/\.[^.]*$/, "") + "_segmentation.png";
}

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

async function segment(file) {
  const request = ++latest;
  setStatus(`Segmenting ${file.name} …`);
  $("result").hidden = true;
  const body = new FormData();
  body.append("file", file, file.name);
  const headers = {};
  const token = $("token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch(`/v1/segment${options()}`, { method: "POST", body, headers });
    const data = await response.json().catch(() => ({ detail: response.statusText }));
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
    if (request !== latest) return;
    window.dermasegResult = data; // handy in the browser console
    const photo = drawResult(bitmap, maskBitmap, data);
    if (bitmap) bitmap.close();
    if (maskBitmap) maskBitmap.close();
    $("note").hidden = photo;
    showMeasurements(data);
    offerMask(mask, file.name);
    $("result").hidden = false;
    setStatus(`${file.name}: done in ${data.inference_ms.toFixed(0)} ms`);
  } catch (error) {
    if (request === latest) setStatus(`Could not show the result: ${error}`, true);
  }
}

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
