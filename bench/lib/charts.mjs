// The report's charts: plain SVG drawn here (no chart library), turned into PNG by screenshotting it in Debian's
// Chromium through playwright-core, launched as the browser tests launch it. A chart that cannot be rendered
// (no Chromium) is kept as SVG and the report links that instead.

import fs from 'node:fs';

const W = 760;
const H = 420;
const M = { l: 70, r: 220, t: 40, b: 55 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * p).find((m) => m >= v * 1.05) || 10 * p;
}

function frame(title, xLabel, yLabel, body) {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans, sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${M.l}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>
<text x="${M.l + (W - M.l - M.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(xLabel)}</text>
<text transform="translate(16 ${M.t + (H - M.t - M.b) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>
${body}</svg>`;
}

function yAxis(max) {
  const ih = H - M.t - M.b;
  let out = '';
  for (let i = 0; i <= 5; i++) {
    const v = (max * i) / 5;
    const y = M.t + ih - (ih * i) / 5;
    out += `<line x1="${M.l}" x2="${W - M.r}" y1="${y}" y2="${y}" stroke="#ddd"/><text x="${M.l - 6}" y="${y + 4}" text-anchor="end">${+v.toPrecision(3)}</text>`;
  }
  return out;
}

function legend(series) {
  return series.map((s, i) => `<rect x="${W - M.r + 14}" y="${M.t + i * 20}" width="12" height="12" fill="${s.color || COLORS[i % COLORS.length]}"/><text x="${W - M.r + 32}" y="${M.t + i * 20 + 10}">${esc(s.name)}</text>`).join('');
}

/** Lines: series = [{name, points: [[x, y], ...], color?}]; x on a log scale when `logX`. */
export function lineChart({ title, xLabel, yLabel, series, logX = false }) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ymax = niceMax(Math.max(...series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite), 0));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const iw = W - M.l - M.r;
  const ih = H - M.t - M.b;
  const fx = (x) => M.l + (logX ? (Math.log(x) - Math.log(x0)) / (Math.log(x1) - Math.log(x0) || 1) : (x - 0) / (x1 || 1)) * iw;
  const fy = (y) => M.t + ih - (y / ymax) * ih;
  let body = yAxis(ymax);
  for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
    body += `<line x1="${fx(x)}" x2="${fx(x)}" y1="${M.t + ih}" y2="${M.t + ih + 5}" stroke="#333"/><text x="${fx(x)}" y="${M.t + ih + 18}" text-anchor="middle">${x.toLocaleString('en-US')}</text>`;
  }
  body += `<line x1="${M.l}" x2="${W - M.r}" y1="${M.t + ih}" y2="${M.t + ih}" stroke="#333"/>`;
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    const c = s.color || COLORS[i % COLORS.length];
    body += `<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.map((p) => `${fx(p[0])},${fy(p[1])}`).join(' ')}"/>`;
    body += pts.map((p) => `<circle cx="${fx(p[0])}" cy="${fy(p[1])}" r="3.5" fill="${c}"/>`).join('');
  });
  return frame(title, xLabel, yLabel, body + legend(series));
}

/** Bars: one bar per item ({name, value}), labelled with its value. */
export function barChart({ title, yLabel, items }) {
  const ymax = niceMax(Math.max(...items.map((b) => b.value).filter(Number.isFinite), 0));
  const L = M.l + 30; // room for the first rotated label
  const iw = W - L - 20;
  const ih = H - M.t - M.b - 45;
  const bw = iw / items.length;
  let body = '';
  for (let i = 0; i <= 5; i++) {
    const y = M.t + ih - (ih * i) / 5;
    body += `<line x1="${M.l}" x2="${W - 20}" y1="${y}" y2="${y}" stroke="#ddd"/><text x="${M.l - 6}" y="${y + 4}" text-anchor="end">${+((ymax * i) / 5).toPrecision(3)}</text>`;
  }
  items.forEach((b, i) => {
    const h = Number.isFinite(b.value) ? (b.value / ymax) * ih : 0;
    const x = L + i * bw + bw * 0.15;
    body += `<rect x="${x}" y="${M.t + ih - h}" width="${bw * 0.7}" height="${h}" fill="${b.color || COLORS[i % COLORS.length]}"/>`;
    body += `<text x="${x + bw * 0.35}" y="${M.t + ih - h - 4}" text-anchor="middle" font-size="11">${Number.isFinite(b.value) ? +b.value.toPrecision(3) : 'n/a'}</text>`;
    body += `<text transform="translate(${x + bw * 0.35} ${M.t + ih + 12}) rotate(-35)" text-anchor="end" font-size="10">${esc(b.name)}</text>`;
  });
  body += `<line x1="${M.l}" x2="${W - 20}" y1="${M.t + ih}" y2="${M.t + ih}" stroke="#333"/>`;
  return frame(title, '', yLabel, body);
}

/**
 * Writes each chart as `<dir>/<name>.svg` and, when Chromium is there, `<dir>/<name>.png`. Returns
 * {name: file name to embed} (the PNG, or the SVG when rendering failed) and logs why a PNG is missing.
 */
export async function render(charts, dir, log) {
  fs.mkdirSync(dir, { recursive: true });
  const files = {};
  for (const [name, svg] of Object.entries(charts)) {
    fs.writeFileSync(`${dir}/${name}.svg`, svg);
    files[name] = `${name}.svg`;
  }
  let browser;
  try {
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    const page = await browser.newPage({ viewport: { width: W, height: H } });
    for (const [name, svg] of Object.entries(charts)) {
      await page.setContent(`<html><body style="margin:0">${svg}</body></html>`);
      await page.locator('svg').screenshot({ path: `${dir}/${name}.png` });
      fs.rmSync(`${dir}/${name}.svg`);
      files[name] = `${name}.png`;
    }
  } catch (err) {
    log(`charts: PNG rendering failed (${err.message.split('\n')[0]}); the report embeds the SVG files`);
  } finally {
    await browser?.close().catch(() => {});
  }
  return files;
}
