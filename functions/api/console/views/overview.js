// Overview: calls in progress against the cap (a live gauge and the last hour), campaigns
// with their progress, counts per status, the oldest due waiting call and the unconfirmed
// outbox messages. It polls (works through API Gateway): /metrics every 5 s, with the
// progress of the campaigns it shows (GET /campaigns/{id} each), and /metrics/history every
// 30 s, while the tab is visible.

import { api, query } from '../api.js';
import { gauge, historyChart, campaignBar } from '../charts.js';
import { h, STATUSES, statusLabel, statusBadge, duration, problemBox, clockWithSeconds, shortId, inProgressText } from '../ui.js';

const METRICS_EVERY_MS = 5000;
const HISTORY_EVERY_MS = 30000;
/** Campaigns shown with their progress: running or paused first, then the newest completed. */
const CAMPAIGNS_SHOWN = 5;

/** The campaigns to show, from /metrics's (the 200 newest not canceled), with their progress. */
async function loadCampaigns(listed, signal) {
  const open = listed.filter((c) => c.status === 'ACTIVE' || c.status === 'PAUSED');
  const rest = listed.filter((c) => c.status !== 'ACTIVE' && c.status !== 'PAUSED');
  const shown = [...open, ...rest].slice(0, CAMPAIGNS_SHOWN);
  const campaigns = await Promise.all(shown.map((c) => api(`campaigns/${encodeURIComponent(c.id)}`, { signal })));
  return { campaigns, more: listed.length - shown.length };
}

export const title = 'Overview';

export async function render(main, view) {
  const [metrics, history] = await Promise.all([
    api('metrics', { signal: view.signal }),
    api('metrics/history', { signal: view.signal }),
  ]);
  const state = { metrics, history, campaigns: await loadCampaigns(metrics.campaigns, view.signal) };

  const errorSlot = h('div', { class: 'error-slot' });
  const gaugeSlot = h('div', { class: 'gauge-slot' });
  const chartSlot = h('div', { class: 'chart-slot' });
  const countsSlot = h('div');
  const campaignsSlot = h('div');
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
    h('section', { class: 'panel', 'aria-labelledby': 'campaigns-heading' },
      h('h2', { id: 'campaigns-heading' }, 'Campaigns'),
      h('p', { class: 'muted small' }, 'Running and paused ones first, then the newest completed. ',
        h('a', { href: '#/campaigns' }, 'All campaigns'), ', canceled ones included.'),
      campaignsSlot),
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
    campaignsSlot.replaceChildren(...campaignList(state.campaigns));
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
    const m = await api('metrics', { signal: view.signal });
    state.campaigns = await loadCampaigns(m.campaigns, view.signal);
    state.metrics = m;
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

function campaignList({ campaigns, more }) {
  if (!campaigns.length) return [h('p', { class: 'muted' }, 'No campaigns (other than canceled ones).')];
  const nodes = [h('ul', { class: 'campaign-list' }, campaigns.map((c) => {
    const p = c.progress;
    return h('li', { class: 'campaign-item', dataset: { campaignId: c.id, status: c.status } },
      h('div', { class: 'campaign-item-head' },
        h('a', { href: `#/campaigns/${c.id}`, class: 'campaign-link' }, c.name),
        statusBadge(c.status)),
      campaignBar(p),
      h('p', { class: 'small campaign-item-facts' },
        h('span', {}, 'In progress: ', h('span', { 'data-testid': 'campaign-in-progress' }, inProgressText(p.inProgress, p.maxConcurrency))),
        h('span', {}, 'Waiting: ', h('span', { 'data-testid': 'campaign-pending' }, String(p.calls.PENDING ?? 0))),
        h('span', {}, 'Failed: ', h('span', { 'data-testid': 'campaign-failed' }, String(p.calls.FAILED ?? 0))),
        h('a', { href: `#/calls${query({ campaignId: c.id })}`, 'aria-label': `Calls of ${c.name}` }, 'Its calls')));
  }))];
  if (more > 0) nodes.push(h('p', { class: 'muted small' }, `${more} more not shown: `, h('a', { href: '#/campaigns' }, 'all campaigns'), '.'));
  return nodes;
}
