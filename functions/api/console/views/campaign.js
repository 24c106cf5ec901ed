// A campaign's page: its progress (a bar of its calls per status, each count a link to its
// calls in the list, in progress against its maxConcurrency, dials in the last hour, an
// ETA), its failures grouped by outcome and error, a link to all its calls, and its settings.
// Pause, resume and cancel, each after a confirmation; a refusal (the 409 of a campaign
// canceled meanwhile) shows the API's problem plainly. Refreshes every 5 s.

import { api, query } from '../api.js';
import { campaignBar } from '../charts.js';
import { h, STATUSES, statusLabel, statusBadge, time, duration, fields, problemBox, announce, confirmDialog, clockWithSeconds, inProgressText } from '../ui.js';

const REFRESH_EVERY_MS = 5000;

export const title = 'Campaign';

export async function render(main, view) {
  const id = view.id;
  const path = `campaigns/${encodeURIComponent(id)}`;
  let campaign = await api(path, { signal: view.signal });

  const heading = h('h1', { tabindex: '-1' });
  const actions = h('div', { class: 'actions' });
  const actionResult = h('div', { class: 'action-result' });
  const errorSlot = h('div', { class: 'error-slot' });
  const progress = h('div');
  const failures = h('div');
  const callsSlot = h('div');
  const settings = h('div');
  const updated = h('p', { class: 'muted updated' });
  const dialog = confirmDialog();
  main.replaceChildren(
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/campaigns' }, 'Campaigns')),
    heading,
    actions,
    actionResult,
    errorSlot,
    h('section', { class: 'panel', 'aria-labelledby': 'progress-heading' },
      h('h2', { id: 'progress-heading' }, 'Progress'), progress, updated),
    h('section', { class: 'panel', 'aria-labelledby': 'failures-heading' },
      h('h2', { id: 'failures-heading' }, 'Failures'),
      h('p', { class: 'muted small' }, 'Its FAILED and EXPIRED calls, grouped by outcome and last error, largest first (at most 20 groups).'),
      failures),
    h('section', { class: 'panel', 'aria-labelledby': 'campaign-calls-heading' },
      h('h2', { id: 'campaign-calls-heading' }, 'Calls'), callsSlot),
    h('section', { class: 'panel', 'aria-labelledby': 'settings-heading' },
      h('h2', { id: 'settings-heading' }, 'Settings'), settings),
    dialog.element);

  const draw = () => {
    const c = campaign;
    heading.replaceChildren(h('span', { class: 'campaign-name' }, c.name), ' ', statusBadge(c.status));
    document.title = `${c.name} · Campaign · Ebra console`;
    // The buttons stay as they are while a confirmation is open.
    if (!dialog.isOpen()) actions.replaceChildren(...actionButtons(c));
    progress.replaceChildren(progressOf(c));
    failures.replaceChildren(failuresOf(c));
    callsSlot.replaceChildren(h('p', {},
      h('a', { class: 'button', href: `#/calls${query({ campaignId: c.id })}`, 'data-testid': 'campaign-calls-link' },
        `List its ${c.progress.total} call${c.progress.total === 1 ? '' : 's'}`)));
    settings.replaceChildren(settingsOf(c));
    updated.textContent = `Updated at ${clockWithSeconds(new Date())}; refreshes every ${REFRESH_EVERY_MS / 1000} s.`;
  };

  const refresh = async () => {
    try {
      campaign = await api(path, { signal: view.signal });
      errorSlot.replaceChildren();
      draw();
    } catch (error) {
      if (error.name === 'AbortError' || view.handle(error)) return;
      errorSlot.replaceChildren(problemBox(error, { heading: 'Could not refresh' }));
    }
  };

  /** Runs one action (`pause`, `resume`, `cancel`) and says what it did or why not. */
  const act = (action, noun, said) => async () => {
    actionResult.replaceChildren(h('p', { class: 'muted' }, `${noun}…`));
    let answer;
    try {
      answer = await api(`${path}/${action}`, { method: 'POST', signal: view.signal });
    } catch (error) {
      if (error.name === 'AbortError' || view.handle(error)) return;
      actionResult.replaceChildren(problemBox(error, { heading: `The ${action} was refused` }));
      await refresh();
      return;
    }
    const text = said(answer);
    actionResult.replaceChildren(h('p', { class: 'success' }, text));
    announce(text);
    await refresh();
  };
  const pause = act('pause', 'Pausing', (c) => `The campaign is ${c.status}.`);
  const resume = act('resume', 'Resuming', (c) => `The campaign is ${c.status}.`);
  const cancel = act('cancel', 'Canceling', (r) =>
    `The campaign is ${r.campaign.status}; ${r.canceledCalls} waiting call${r.canceledCalls === 1 ? ' was' : 's were'} canceled.`);

  function actionButtons(c) {
    const waiting = c.progress.calls.PENDING ?? 0;
    const running = c.progress.calls.IN_PROGRESS ?? 0;
    const buttons = [];
    if (c.status === 'ACTIVE' || c.status === 'COMPLETED') {
      buttons.push(h('button', {
        type: 'button',
        onclick: (event) => dialog.open({
          title: 'Pause this campaign?',
          text: `Its ${waiting} waiting call${waiting === 1 ? '' : 's'} will not be dialed until it is resumed; the ${running} in progress finish.`,
          keep: 'Keep it running',
          confirm: 'Pause the campaign',
        }, event.currentTarget, pause),
      }, 'Pause…'));
    }
    if (c.status === 'PAUSED') {
      buttons.push(h('button', {
        type: 'button',
        onclick: (event) => dialog.open({
          title: 'Resume this campaign?',
          text: `Its ${waiting} waiting call${waiting === 1 ? '' : 's'} will be dialed again, as free slots allow.`,
          keep: 'Keep it paused',
          confirm: 'Resume the campaign',
        }, event.currentTarget, resume),
      }, 'Resume…'));
    }
    if (c.status !== 'CANCELED') {
      buttons.push(h('button', {
        type: 'button', class: 'button-danger',
        onclick: (event) => dialog.open({
          title: 'Cancel this campaign?',
          text: `Its ${waiting} waiting call${waiting === 1 ? '' : 's'} will be canceled at once; the ${running} in progress finish. A canceled campaign cannot be resumed and takes no new calls.`,
          keep: 'Keep the campaign',
          confirm: 'Cancel the campaign',
          danger: true,
        }, event.currentTarget, cancel),
      }, 'Cancel campaign…'));
    }
    buttons.push(h('button', { type: 'button', class: 'button-quiet', onclick: refresh }, 'Refresh'));
    return buttons;
  }

  draw();
  view.every(REFRESH_EVERY_MS, refresh);
}

function etaText(p) {
  if (p.etaSeconds !== null && p.etaSeconds !== undefined) return `about ${duration(p.etaSeconds)}`;
  const left = (p.calls.PENDING ?? 0) + (p.calls.IN_PROGRESS ?? 0);
  return left === 0 ? 'nothing left to dial' : 'unknown: no dials in the last hour';
}

function progressOf(c) {
  const p = c.progress;
  return h('div', {},
    campaignBar(p),
    h('ul', { class: 'counts counts-compact' }, STATUSES.map((status) => h('li', {},
      h('a', {
        class: `count count-${status.toLowerCase().replace('_', '-')}`,
        href: `#/calls${query({ campaignId: c.id, status })}`,
        dataset: { status },
      },
      h('span', { class: 'count-number' }, String(p.calls[status] ?? 0)),
      ' ',
      h('span', { class: 'count-label' }, statusLabel(status)))))),
    fields([
      ['Calls', h('span', { 'data-testid': 'campaign-total' }, String(p.total))],
      ['In progress', h('span', { 'data-testid': 'campaign-in-progress' }, inProgressText(p.inProgress, p.maxConcurrency))],
      ['Dials in the last hour', h('span', { 'data-testid': 'campaign-dials' }, String(p.dialsLastHour))],
      ['Done in', h('span', { 'data-testid': 'campaign-eta', dataset: { seconds: p.etaSeconds ?? '' } }, etaText(p))],
    ]));
}

function failuresOf(c) {
  const groups = c.progress.failures;
  if (!groups.length) return h('p', { class: 'empty', 'data-testid': 'no-failures' }, 'No failed or expired calls.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'calls-table failures-table' },
    h('caption', { class: 'visually-hidden' }, 'Failed and expired calls, grouped'),
    h('thead', {}, h('tr', {}, ['Calls', 'Status', 'Outcome', 'Last error'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, groups.map((g) => h('tr', {},
      h('td', { 'data-label': 'Calls' }, h('a', {
        href: `#/calls${query({ campaignId: c.id, status: g.status })}`,
        'aria-label': `${g.calls} ${g.status} call${g.calls === 1 ? '' : 's'}: list the campaign's ${g.status} calls`,
      }, String(g.calls))),
      h('td', { 'data-label': 'Status' }, statusBadge(g.status)),
      h('td', { 'data-label': 'Outcome' }, g.outcome ?? h('span', { class: 'muted' }, '—')),
      h('td', { 'data-label': 'Last error', class: 'cell-error' }, g.lastError ?? ''))))));
}

function settingsOf(c) {
  const window = c.window
    ? `${c.window.start}–${c.window.end}${c.window.days ? ` on ${c.window.days.join(', ')}` : ', every day'} (callee's local time)`
    : null;
  return fields([
    ['Id', h('code', {}, c.id)],
    ['Script', c.scriptId ? h('code', {}, c.scriptId) : null],
    ['Max concurrency', c.maxConcurrency === null ? 'none of its own (the global cap)' : String(c.maxConcurrency)],
    ['Calls expire at', c.expiresAt ? time(c.expiresAt) : null],
    ['Calling window', window],
    ['Callback URL', c.callbackUrl ? h('code', {}, c.callbackUrl) : null],
    ['Created', time(c.createdAt)],
    ['Updated', time(c.updatedAt)],
    ['Canceled', c.canceledAt ? time(c.canceledAt) : null],
  ]);
}
