// A call's page: its fields (its campaign, when it has one, a link to the campaign's page) and
// metadata, why it waits (when PENDING), and a timeline of its dials (idempotency key,
// provider call id, dial state, error, outcome, timestamps) and of the webhooks received for
// them. A PENDING call can be canceled, after a confirmation; a refusal shows the API's
// problem plainly. Refreshes every 5 s until the call ends.

import { api } from '../api.js';
import { h, statusBadge, time, duration, fields, problemBox, announce, confirmDialog } from '../ui.js';

const REFRESH_EVERY_MS = 5000;
const TERMINAL = ['COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED'];

export const title = 'Call';

async function load(id, signal) {
  const path = `calls/${encodeURIComponent(id)}`;
  const [call, webhooks] = await Promise.all([api(path, { signal }), api(`${path}/webhooks`, { signal })]);
  return { call, webhooks };
}

export async function render(main, view) {
  const id = view.id;
  let data = await load(id, view.signal);
  // The campaign's name, read once: a call never changes campaign.
  const campaign = data.call.campaignId ? await campaignOf(data.call.campaignId, view.signal) : null;

  const heading = h('h1', { tabindex: '-1' });
  const actions = h('div', { class: 'actions' });
  const actionResult = h('div', { class: 'action-result' });
  const errorSlot = h('div', { class: 'error-slot' });
  const details = h('div');
  const metadata = h('div');
  const timeline = h('div');
  const dialog = confirmDialog();
  main.replaceChildren(
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/calls' }, 'Calls')),
    heading,
    actions,
    actionResult,
    errorSlot,
    h('section', { class: 'panel', 'aria-labelledby': 'details-heading' },
      h('h2', { id: 'details-heading' }, 'Details'), details),
    h('section', { class: 'panel', 'aria-labelledby': 'metadata-heading' },
      h('h2', { id: 'metadata-heading' }, 'Metadata'), metadata),
    h('section', { class: 'panel', 'aria-labelledby': 'timeline-heading' },
      h('h2', { id: 'timeline-heading' }, 'Timeline'),
      h('p', { class: 'muted small' }, 'Its dials and the webhooks the provider sent for them, oldest first.'),
      timeline),
    dialog.element);

  const draw = () => {
    const { call, webhooks } = data;
    heading.replaceChildren('Call ', h('code', { class: 'call-id' }, call.id), ' ', statusBadge(call.status));
    // The buttons stay as they are while the confirmation is open.
    if (!dialog.isOpen()) actions.replaceChildren(...actionButtons(call));
    details.replaceChildren(callFields(call, campaign));
    metadata.replaceChildren(h('pre', { class: 'metadata' }, JSON.stringify(call.metadata, null, 2)));
    timeline.replaceChildren(timelineOf(call, webhooks));
  };

  const refresh = async () => {
    try {
      data = await load(id, view.signal);
      errorSlot.replaceChildren();
      draw();
    } catch (error) {
      if (error.name === 'AbortError' || view.handle(error)) return;
      errorSlot.replaceChildren(problemBox(error, { heading: 'Could not refresh' }));
    }
  };

  const cancel = async () => {
    actionResult.replaceChildren(h('p', { class: 'muted' }, 'Canceling…'));
    try {
      await api(`calls/${encodeURIComponent(id)}/cancel`, { method: 'POST', signal: view.signal });
    } catch (error) {
      if (error.name === 'AbortError' || view.handle(error)) return;
      actionResult.replaceChildren(problemBox(error, { heading: 'The cancel was refused' }));
      await refresh();
      return;
    }
    actionResult.replaceChildren(h('p', { class: 'success' }, 'The call is canceled.'));
    announce('The call is canceled.');
    // The cancel answers the call alone; the page shows it with its dials and webhooks.
    await refresh();
  };

  function actionButtons(call) {
    const buttons = [];
    if (call.status === 'PENDING') {
      buttons.push(h('button', {
        type: 'button', class: 'button-danger',
        onclick: (event) => dialog.open({
          title: 'Cancel this call?',
          text: `The call to ${call.to} will not be dialed. A canceled call cannot be resumed.`,
          keep: 'Keep the call',
          confirm: 'Cancel the call',
          danger: true,
        }, event.currentTarget, cancel),
      }, 'Cancel call…'));
    }
    buttons.push(h('button', { type: 'button', class: 'button-quiet', onclick: refresh }, 'Refresh'));
    return buttons;
  }

  draw();
  view.every(REFRESH_EVERY_MS, async () => {
    if (!TERMINAL.includes(data.call.status)) await refresh();
  });
}

/** The call's campaign, or `{id}` alone when it cannot be read (the link still works). */
async function campaignOf(campaignId, signal) {
  try {
    return await api(`campaigns/${encodeURIComponent(campaignId)}`, { signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    return { id: campaignId };
  }
}

function callFields(call, campaign) {
  return fields([
    ['Status', statusBadge(call.status)],
    campaign ? ['Campaign', h('a', { href: `#/campaigns/${campaign.id}`, 'data-testid': 'call-campaign' },
      campaign.name ?? campaign.id)] : null,
    ['To', call.to],
    ['Script', h('code', {}, call.scriptId)],
    ['Attempts', `${call.attempts} of ${call.maxAttempts}`],
    call.status === 'PENDING' ? ['Waiting', waitingReason(call)] : null,
    ['Outcome', call.outcome],
    ['Duration', call.durationSec === null ? null : duration(call.durationSec)],
    ['Last error', call.lastError ? h('span', { class: 'error-text' }, call.lastError) : null],
    ['Scheduled at', call.scheduledAt ? time(call.scheduledAt) : null],
    ['Expires at', call.expiresAt ? time(call.expiresAt) : null],
    call.status === 'PENDING' ? ['Next dial not before', time(call.nextRunAt)] : null,
    ['Created', time(call.createdAt)],
    ['Updated', time(call.updatedAt)],
    ['Started', call.startedAt ? time(call.startedAt) : null],
    ['Ended', call.endedAt ? time(call.endedAt) : null],
  ]);
}

/** Why a PENDING call has not been dialed yet, as far as its own row tells. */
function waitingReason(call) {
  const due = new Date(call.nextRunAt);
  const now = new Date();
  if (due > now) {
    const why = call.attempts > 0 ? `backing off after dial ${call.attempts}` : 'scheduled';
    return `Not due yet (${why}): due in ${duration((due - now) / 1000)}.`;
  }
  return `Due ${duration((now - due) / 1000)} ago: waiting for a free slot under the cap, or for its phone number's call in progress to end.`;
}

function timelineOf(call, webhooks) {
  const events = [{ at: call.createdAt, order: 0, node: () => entry('created', 'Created', call.createdAt, call.scheduledAt ? fields([['Scheduled for', time(call.scheduledAt)]]) : null) }];
  for (const dial of call.dials) {
    events.push({ at: dial.startedAt, order: 1, node: () => dialEntry(dial) });
  }
  for (const webhook of webhooks.items) {
    events.push({ at: webhook.receivedAt, order: 2, node: () => webhookEntry(webhook) });
  }
  if (call.endedAt) {
    // The end is reported by a webhook whose `completedAt` (the provider's clock) may come
    // before we received it: the end is placed after the report that caused it.
    const applied = webhooks.items.filter((w) => w.disposition === 'APPLIED').map((w) => new Date(w.receivedAt));
    const placed = new Date(Math.max(new Date(call.endedAt), ...applied)).toISOString();
    events.push({ at: placed, order: 3, node: () => entry(`ended ended-${call.status.toLowerCase()}`, `Ended ${call.status}`, call.endedAt, call.lastError ? h('p', { class: 'error-text' }, call.lastError) : null) });
  }
  events.sort((a, b) => new Date(a.at) - new Date(b.at) || a.order - b.order);
  const list = h('ol', { class: 'timeline' }, events.map((e) => e.node()));
  if (webhooks.truncated) {
    return h('div', {}, list, h('p', { class: 'muted' }, 'Only the first 200 webhooks are listed.'));
  }
  return list;
}

function entry(kind, heading, at, body) {
  return h('li', { class: `timeline-entry timeline-${kind.split(' ')[0]} ${kind}` },
    h('div', { class: 'timeline-head' }, h('h3', {}, heading), time(at)),
    body);
}

function dialEntry(dial) {
  const li = entry('dial', `Dial ${dial.attempt}`, dial.startedAt, fields([
    ['Dial state', h('span', { class: `state state-${dial.dialState.toLowerCase()}` }, dial.dialState)],
    ['Idempotency key', h('code', {}, dial.idempotencyKey)],
    ['Provider call id', dial.providerCallId ? h('code', {}, dial.providerCallId) : null],
    ['Error', dial.error ? h('span', { class: 'error-text' }, dial.error) : null],
    ['Outcome', dial.outcome],
    ['Duration', dial.durationSec === null ? null : duration(dial.durationSec)],
    ['Started', time(dial.startedAt)],
    ['Dialed', dial.dialedAt ? time(dial.dialedAt) : null],
    ['Ended', dial.endedAt ? time(dial.endedAt) : null],
  ], 'fields fields-compact'));
  li.dataset.attempt = dial.attempt;
  return li;
}

function webhookEntry(webhook) {
  const li = entry('webhook', `Webhook: ${webhook.status} for dial ${webhook.attempt}`, webhook.receivedAt, fields([
    ['Webhook id', h('code', {}, webhook.webhookId)],
    ['Provider call id', h('code', {}, webhook.providerCallId)],
    ['Reported status', webhook.status],
    ['Duration', webhook.durationSec === null ? null : duration(webhook.durationSec)],
    ['Completed at (provider)', webhook.completedAt ? time(webhook.completedAt) : null],
    ['Received', time(webhook.receivedAt)],
    ['Applied', webhook.appliedAt ? time(webhook.appliedAt) : 'not yet (held until its dial is recorded)'],
    ['Effect', webhook.disposition],
  ], 'fields fields-compact'));
  li.dataset.webhookId = webhook.webhookId;
  return li;
}
