// Calls: the list, newest first, filtered by status and by campaign (a <select> of the 100
// newest campaigns), searchable by phone number (E.164, the API's `to` filter) or by id
// (opens the call), paged by cursor. The filter lives in the address
// (#/calls?status=FAILED&campaignId=...&to=%2B1...&cursor=...), so Back and bookmarks work.

import { api, query } from '../api.js';
import { h, STATUSES, statusLabel, statusBadge, time, shortId, problemBox, isUuid } from '../ui.js';

const PAGE_SIZE = 25;

export const title = 'Calls';

export async function render(main, view) {
  const params = view.params;
  const status = STATUSES.includes(params.get('status')) ? params.get('status') : '';
  const to = params.get('to') || '';
  const campaignId = params.get('campaignId') || '';
  const cursor = params.get('cursor') || '';

  // Both at once; the campaigns (for the filter's names) are awaited first.
  const calls = api(`calls${query({ status, campaignId, to, cursor, pageSize: PAGE_SIZE })}`, { signal: view.signal });
  calls.catch(() => {});
  let campaigns = [];
  let campaignsError = null;
  try {
    campaigns = (await api(`campaigns${query({ pageSize: 100 })}`, { signal: view.signal })).items;
  } catch (error) {
    if (error.name === 'AbortError' || view.handle(error)) return;
    campaignsError = error;
  }
  const names = new Map(campaigns.map((c) => [c.id, c.name]));

  const form = searchForm({ status, to, campaignId, campaigns, campaignsError }, view);
  const results = h('div', { class: 'results', 'aria-live': 'polite' });
  main.replaceChildren(h('h1', { tabindex: '-1' }, 'Calls'), form, results);

  let page;
  try {
    page = await calls;
  } catch (error) {
    if (error.name === 'AbortError' || view.handle(error)) return;
    results.replaceChildren(problemBox(error, { heading: 'The list was refused' }));
    return;
  }
  results.replaceChildren(...list(page, { status, to, campaignId, cursor }, names));
}

function searchForm({ status, to, campaignId, campaigns, campaignsError }, view) {
  const statusSelect = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'Any status'),
    STATUSES.map((s) => h('option', { value: s, selected: s === status }, statusLabel(s))));
  const known = campaigns.some((c) => c.id === campaignId);
  const campaignSelect = h('select', {
    id: 'filter-campaign', name: 'campaignId', 'aria-describedby': campaignsError ? 'filter-campaign-help' : undefined,
  },
  h('option', { value: '' }, 'Any campaign'),
  campaigns.map((c) => h('option', { value: c.id, selected: c.id === campaignId },
    c.status === 'CANCELED' ? `${c.name} (canceled)` : c.name)),
  campaignId && !known ? h('option', { value: campaignId, selected: true }, `Campaign ${campaignId}`) : null);
  const search = h('input', {
    id: 'filter-search', name: 'search', type: 'search', value: to, autocomplete: 'off',
    spellcheck: 'false', inputmode: 'text', 'aria-describedby': 'filter-search-help',
  });
  const message = h('p', { class: 'form-message', id: 'filter-search-message', role: 'alert' });
  const form = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Filter calls', novalidate: true,
    onsubmit: (event) => {
      event.preventDefault();
      const text = search.value.trim();
      message.textContent = '';
      if (isUuid(text)) {
        view.go(`#/calls/${text.toLowerCase()}`);
        return;
      }
      if (text && !text.startsWith('+')) {
        message.textContent = 'Enter a phone number in E.164 form, starting with + (e.g. +14155550100), or a call id.';
        search.setAttribute('aria-invalid', 'true');
        search.focus();
        return;
      }
      view.go(`#/calls${query({ status: statusSelect.value, campaignId: campaignSelect.value, to: text })}`);
    },
  },
  h('div', { class: 'filter' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect),
  h('div', { class: 'filter filter-campaign' }, h('label', { for: 'filter-campaign' }, 'Campaign'), campaignSelect,
    campaignsError ? h('p', { class: 'muted small', id: 'filter-campaign-help' },
      `The campaigns' names could not be read (${campaignsError.message}).`) : null),
  h('div', { class: 'filter filter-grow' },
    h('label', { for: 'filter-search' }, 'Phone number or call id'),
    search,
    h('p', { class: 'muted small', id: 'filter-search-help' }, 'A number in E.164 form lists its calls; an id opens the call.')),
  h('div', { class: 'filter filter-buttons' },
    h('button', { type: 'submit' }, 'Search'),
    h('a', { class: 'button button-quiet', href: '#/calls' }, 'Clear')),
  message);
  // A new status or campaign applies at once; the search box waits for Enter or the button.
  statusSelect.addEventListener('change', () => form.requestSubmit());
  campaignSelect.addEventListener('change', () => form.requestSubmit());
  return form;
}

function list(page, { status, to, campaignId, cursor }, names) {
  const described = [
    status ? `status ${status}` : null,
    campaignId ? `campaign ${names.get(campaignId) ?? campaignId}` : null,
    to ? `to ${to}` : null,
  ].filter(Boolean).join(', ');
  let summary;
  if (page.total !== null && page.total !== undefined) {
    const count = page.totalRelation === 'gte' ? `at least ${page.total}` : String(page.total);
    summary = `${count} call${page.total === 1 ? '' : 's'}${described ? ` with ${described}` : ''}`;
  } else {
    summary = `${page.items.length} call${page.items.length === 1 ? '' : 's'} on this page${described ? ` with ${described}` : ''}`;
  }
  const nodes = [h('p', { class: 'list-summary', 'data-testid': 'list-summary' }, summary)];
  if (!page.items.length) {
    nodes.push(h('p', { class: 'empty' }, 'No calls match.'));
  } else {
    nodes.push(h('div', { class: 'table-wrap' }, h('table', { class: 'calls-table' },
      h('caption', { class: 'visually-hidden' }, `Calls, newest first${described ? `, ${described}` : ''}`),
      h('thead', {}, h('tr', {},
        ['Call', 'To', 'Status', 'Campaign', 'Attempts', 'Created', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, page.items.map((call) => row(call, names))))));
  }
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  if (cursor) pager.append(h('a', { class: 'button button-quiet', href: `#/calls${query({ status, campaignId, to })}` }, 'First page'));
  if (page.nextCursor) {
    pager.append(h('a', { class: 'button', href: `#/calls${query({ status, campaignId, to, cursor: page.nextCursor })}` }, 'Next page'));
  }
  if (pager.childElementCount) nodes.push(pager);
  return nodes;
}

function row(call, names) {
  const campaign = call.campaignId
    ? h('a', { href: `#/campaigns/${call.campaignId}` }, names.get(call.campaignId) ?? shortId(call.campaignId))
    : h('span', { class: 'muted' }, '—');
  return h('tr', { dataset: { callId: call.id, status: call.status, campaignId: call.campaignId ?? '' } },
    h('td', { 'data-label': 'Call' }, h('a', { href: `#/calls/${call.id}`, 'aria-label': `Call ${call.id}` }, h('code', {}, shortId(call.id)))),
    h('td', { 'data-label': 'To' }, call.to),
    h('td', { 'data-label': 'Status' }, statusBadge(call.status)),
    h('td', { 'data-label': 'Campaign' }, campaign),
    h('td', { 'data-label': 'Attempts' }, `${call.attempts} of ${call.maxAttempts}`),
    h('td', { 'data-label': 'Created' }, time(call.createdAt)),
    h('td', { 'data-label': 'Last error', class: 'cell-error' }, call.lastError || ''));
}
