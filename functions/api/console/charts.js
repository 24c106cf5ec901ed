// The console's pictures, drawn by hand (no library): the gauge of calls in progress against
// the cap, the last hour's chart, and a campaign's progress bar. Each carries a text
// equivalent.

import { h, svg, clock, statusLabel, endedCalls } from './ui.js';

/** Which band a load is in: the gauge's colour and its words. */
export function loadLevel(inProgress, cap) {
  if (cap > 0 && inProgress >= cap) return 'saturated';
  if (cap > 0 && inProgress >= 0.8 * cap) return 'high';
  return 'normal';
}

/** A half-circle gauge: `inProgress` of `cap`. */
export function gauge(inProgress, cap) {
  const fraction = cap > 0 ? Math.min(1, inProgress / cap) : 0;
  const percent = cap > 0 ? Math.round((100 * inProgress) / cap) : 0;
  const level = loadLevel(inProgress, cap);
  const angle = Math.PI * (1 - fraction);
  const x = 100 + 80 * Math.cos(angle);
  const y = 100 - 80 * Math.sin(angle);
  const track = 'M 20 100 A 80 80 0 0 1 180 100';
  const picture = svg('svg', { viewBox: '0 0 200 112', class: 'gauge-svg', 'aria-hidden': 'true', focusable: 'false' },
    svg('path', { d: track, class: 'gauge-track' }),
    fraction > 0 ? svg('path', { d: `M 20 100 A 80 80 0 0 1 ${x.toFixed(2)} ${y.toFixed(2)}`, class: `gauge-value gauge-${level}` }) : null);
  const words = { saturated: 'at the cap', high: 'near the cap', normal: 'below the cap' }[level];
  return h('div', {
    class: 'gauge',
    role: 'meter',
    'aria-label': 'Calls in progress',
    'aria-valuemin': 0,
    'aria-valuemax': cap,
    'aria-valuenow': Math.min(inProgress, cap),
    'aria-valuetext': `${inProgress} of ${cap} calls in progress (${percent}%), ${words}`,
  },
  picture,
  h('p', { class: 'gauge-reading' },
    h('span', { class: 'gauge-number', 'data-testid': 'gauge-in-progress' }, String(inProgress)),
    h('span', { class: 'gauge-cap' }, ` / ${cap}`)),
  h('p', { class: `gauge-words gauge-words-${level}` }, `${percent}% of the cap, ${words}`));
}

const MARGIN = { left: 40, right: 14, top: 14, bottom: 30 };

/**
 * A step chart of the peak calls in progress per minute, with the cap as a dashed line.
 * `points`: [{at, peakInProgress}], oldest first. `width`: the space it has, in CSS pixels
 * (drawn at that size, its labels stay legible on a narrow screen).
 */
export function historyChart(points, cap, width) {
  const WIDTH = Math.round(Math.min(760, Math.max(280, width || 640)));
  const HEIGHT = WIDTH < 480 ? 180 : 220;
  const n = points.length;
  const peaks = points.map((p) => p.peakInProgress);
  const highest = Math.max(0, ...peaks);
  const top = Math.max(1, cap, highest);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const xOf = (i) => MARGIN.left + (plotWidth * i) / Math.max(1, n);
  const yOf = (v) => MARGIN.top + plotHeight - (plotHeight * v) / top;
  let line = '';
  peaks.forEach((v, i) => {
    line += `${i === 0 ? 'M' : 'L'} ${xOf(i).toFixed(1)} ${yOf(v).toFixed(1)} L ${xOf(i + 1).toFixed(1)} ${yOf(v).toFixed(1)} `;
  });
  const area = n
    ? `${line} L ${xOf(n).toFixed(1)} ${yOf(0).toFixed(1)} L ${xOf(0).toFixed(1)} ${yOf(0).toFixed(1)} Z`
    : '';
  const labelAt = (i) => (n ? clock(new Date(points[Math.min(i, n - 1)].at)) : '');
  const ticks = n ? [0, Math.floor(n / 2), n - 1] : [];
  const now = peaks.at(-1) ?? 0;
  const summary = n
    ? `Calls in progress per minute over the last ${n} minutes: highest ${highest} of a cap of ${cap}, ${now} in the current minute.`
    : 'No history.';
  const chart = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart-svg', role: 'img', 'aria-label': summary,
  },
  svg('title', {}, summary),
  svg('line', { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: yOf(0), y2: yOf(0), class: 'chart-axis' }),
  svg('path', { d: area, class: 'chart-area' }),
  svg('path', { d: line, class: 'chart-line' }),
  cap > 0 ? svg('line', { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: yOf(cap), y2: yOf(cap), class: 'chart-cap' }) : null,
  svg('text', { x: MARGIN.left - 6, y: yOf(0) + 4, class: 'chart-label', 'text-anchor': 'end' }, '0'),
  cap > 0 ? svg('text', { x: MARGIN.left - 6, y: yOf(cap) + 4, class: 'chart-label', 'text-anchor': 'end' }, String(cap)) : null,
  cap > 0 ? svg('text', { x: WIDTH - MARGIN.right, y: yOf(cap) - 5, class: 'chart-label chart-cap-label', 'text-anchor': 'end' }, 'cap') : null,
  ...ticks.map((i, k) => svg('text', {
    x: k === 0 ? xOf(0) : k === ticks.length - 1 ? xOf(n) : xOf(i),
    y: HEIGHT - 8,
    class: 'chart-label',
    'text-anchor': k === 0 ? 'start' : k === ticks.length - 1 ? 'end' : 'middle',
  }, labelAt(i))));
  const table = h('details', { class: 'chart-data' },
    h('summary', {}, 'The chart as a table'),
    h('table', {},
      h('caption', { class: 'visually-hidden' }, 'Peak calls in progress per minute'),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Minute'), h('th', { scope: 'col' }, 'Peak in progress'))),
      h('tbody', {}, points.map((p) => h('tr', {}, h('td', {}, clock(new Date(p.at))), h('td', {}, String(p.peakInProgress)))))));
  return h('div', { class: 'chart' }, chart, table);
}

/** The order of a campaign's bar: ended calls first, then what is left. */
const BAR_ORDER = ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED', 'IN_PROGRESS', 'PENDING'];

/**
 * A campaign's progress (`progress` of `GET /campaigns/{id}`): one bar with a segment per
 * status, and its words ("12 of 20 calls ended (60%)"), which the screen reader reads.
 */
export function campaignBar(progress) {
  const { calls, total } = progress;
  const ended = endedCalls(calls);
  const percent = total > 0 ? Math.floor((100 * ended) / total) : 0;
  const words = total > 0
    ? `${ended} of ${total} call${total === 1 ? '' : 's'} ended (${percent}%)`
    : 'No calls yet';
  const parts = BAR_ORDER.filter((s) => (calls[s] ?? 0) > 0)
    .map((s) => `${statusLabel(s).toLowerCase()} ${calls[s]}`);
  // SVG (its rectangles' widths are attributes: the page's CSP allows no inline styles).
  let x = 0;
  const segments = total > 0 ? BAR_ORDER.filter((s) => (calls[s] ?? 0) > 0).map((s) => {
    const width = (100 * calls[s]) / total;
    const rect = svg('rect', { x: x.toFixed(3), y: 0, width: width.toFixed(3), height: 10, class: `segment-${s.toLowerCase().replace('_', '-')}` });
    x += width;
    return rect;
  }) : [];
  return h('div', { class: 'campaign-bar' },
    svg('svg', { viewBox: '0 0 100 10', preserveAspectRatio: 'none', class: 'bar', 'aria-hidden': 'true', focusable: 'false' },
      svg('rect', { x: 0, y: 0, width: 100, height: 10, class: 'bar-track' }),
      ...segments),
    h('p', { class: 'bar-words' },
      h('span', { 'data-testid': 'campaign-ended' }, words),
      parts.length ? h('span', { class: 'muted' }, `: ${parts.join(', ')}`) : null));
}
