// Overview: calls in progress against the cap (a live gauge and the last hour), counts per
// status, the oldest due waiting call and the unconfirmed outbox messages. It polls (works
// through API Gateway): /metrics every 5 s, /metrics/history every 30 s, while the tab is
// visible. Campaigns, once they exist, get a section here from their own module.

import { api } from '../api.js';
import { gauge, historyChart } from '../charts.js';
import { h, STATUSES, statusLabel, duration, problemBox, clockWithSeconds, shortId } from '../ui.js';

const METRICS_EVERY_MS = 5000;
const HISTORY_EVERY_MS = 30000;

export const title = 'Overview';

export async function render(main, view) {
  const [metrics, history] = await Promise.all([
    api('metrics', { signal: view.signal }),
    api('metrics/history', { signal: view.signal }),
  ]);
  const state = { metrics, history };

  const errorSlot = h('div', { class: 'error-slot' });
  const gaugeSlot = h('div', { class: 'gauge-slot' });
  const chartSlot = h('div', { class: 'chart-slot' });
  const countsSlot = h('div');
  const waitingSlot = h('div');
  const updated = h('span', { class: 'muted updated' });
  const refreshNow = h('button', { type: 'button', class: 'button-quiet' }, 'Refresh now');
  main.replaceChildren(
    h('h1', { tabindex: '-1' }, 'Overview'),
    h('div', { class: 'toolbar' }, refreshNow, updated),
    errorSlot,
    h('div', { class: 'overview-grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'in-progress-heading' },
        h('h2', { id: 'in-progress-heading' }, 'Calls in progress'), gaugeSlot),
      h('section', { class: 'panel panel-wide', 'aria-labelledby': 'history-heading' },
        h('h2', { id: 'history-heading' }, 'The last hour'),
        h('p', { class: 'muted small' }, 'Most calls in progress at once, per minute.'),
        chartSlot)),
    h('section', { class: 'panel', 'aria-labelledby': 'counts-heading' },
      h('h2', { id: 'counts-heading' }, 'Calls by status'), countsSlot),
    h('section', { class: 'panel', 'aria-labelledby': 'waiting-heading' },
      h('h2', { id: 'waiting-heading' }, 'Waiting'), waitingSlot));

  const draw = () => {
    const m = state.metrics;
    gaugeSlot.replaceChildren(gauge(m.inProgress, m.globalConcurrency));
    // The current minute's point is at least what is in progress right now.
    const points = state.history.minutes.map((p) => ({ ...p }));
    if (points.length) {
      const last = points[points.length - 1];
      last.peakInProgress = Math.max(last.peakInProgress, m.inProgress);
    }
    chartSlot.replaceChildren(historyChart(points, state.history.globalConcurrency, chartSlot.clientWidth));
    countsSlot.replaceChildren(counts(m.calls));
    waitingSlot.replaceChildren(waiting(m));
    updated.textContent = `Updated at ${clockWithSeconds(new Date())}; refreshes every ${METRICS_EVERY_MS / 1000} s.`;
  };
  draw();

  const refresh = (load) => async () => {
    try {
      await load();
      errorSlot.replaceChildren();
      draw();
    } catch (error) {
      if (error.name === 'AbortError') return;
      if (!view.handle(error)) {
        errorSlot.replaceChildren(problemBox(error, { heading: 'Could not refresh' }));
      }
    }
  };
  const refreshMetrics = refresh(async () => {
    state.metrics = await api('metrics', { signal: view.signal });
  });
  refreshNow.addEventListener('click', refreshMetrics);
  view.every(METRICS_EVERY_MS, refreshMetrics);
  view.every(HISTORY_EVERY_MS, refresh(async () => {
    state.history = await api('metrics/history', { signal: view.signal });
  }));
}

function counts(calls) {
  return h('ul', { class: 'counts' }, STATUSES.map((status) => {
    const count = calls[status] ?? 0;
    return h('li', {},
      h('a', {
        class: `count count-${status.toLowerCase().replace('_', '-')}`,
        href: `#/calls?status=${status}`,
        dataset: { status },
      },
      h('span', { class: 'count-number' }, String(count)),
      ' ',
      h('span', { class: 'count-label' }, statusLabel(status))));
  }));
}

function waiting(m) {
  const oldest = m.oldestDuePendingCallId
    ? h('span', {},
      h('a', { href: `#/calls/${m.oldestDuePendingCallId}` }, shortId(m.oldestDuePendingCallId)),
      `, due ${duration(m.oldestDuePendingAgeSeconds)} ago`)
    : 'none: no PENDING call is due';
  return h('dl', { class: 'fields' },
    h('div', { class: 'field' }, h('dt', {}, 'Oldest due waiting call'), h('dd', { 'data-testid': 'oldest-due' }, oldest)),
    h('div', { class: 'field' },
      h('dt', {}, 'Unconfirmed outbox messages'),
      h('dd', { 'data-testid': 'outbox-unconfirmed' }, String(m.outboxUnconfirmed),
        h('span', { class: 'muted small block' }, 'PENDING calls whose queue message the worker has not confirmed yet; the reclaimer re-sends overdue ones.'))));
}
