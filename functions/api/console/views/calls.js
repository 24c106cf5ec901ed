// Calls: the list, newest first, filtered by status (and by campaign, once campaigns exist:
// one more <select> here and one more query parameter), searchable by phone number (E.164,
// the API's `to` filter) or by id (opens the call), paged by cursor. The filter lives in the
// address (#/calls?status=FAILED&to=%2B1...&cursor=...), so Back and bookmarks work.

import { api, query } from '../api.js';
import { h, STATUSES, statusLabel, statusBadge, time, shortId, problemBox, isUuid } from '../ui.js';

const PAGE_SIZE = 25;

export const title = 'Calls';

export async function render(main, view) {
  const params = view.params;
  const status = STATUSES.includes(params.get('status')) ? params.get('status') : '';
  const to = params.get('to') || '';
  const cursor = params.get('cursor') || '';

  const form = searchForm({ status, to }, view);
  const results = h('div', { class: 'results', 'aria-live': 'polite' });
  main.replaceChildren(h('h1', { tabindex: '-1' }, 'Calls'), form, results);

  let page;
  try {
    page = await api(`calls${query({ status, to, cursor, pageSize: PAGE_SIZE })}`, { signal: view.signal });
  } catch (error) {
    if (error.name === 'AbortError' || view.handle(error)) return;
    results.replaceChildren(problemBox(error, { heading: 'The list was refused' }));
    return;
  }
  results.replaceChildren(...list(page, { status, to, cursor }));
}

function searchForm({ status, to }, view) {
  const statusSelect = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'Any status'),
    STATUSES.map((s) => h('option', { value: s, selected: s === status }, statusLabel(s))));
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
      view.go(`#/calls${query({ status: statusSelect.value, to: text })}`);
    },
  },
  h('div', { class: 'filter' }, h('label', { for: 'filter-status' }, 'Status'), statusSelect),
  h('div', { class: 'filter filter-grow' },
    h('label', { for: 'filter-search' }, 'Phone number or call id'),
    search,
    h('p', { class: 'muted small', id: 'filter-search-help' }, 'A number in E.164 form lists its calls; an id opens the call.')),
  h('div', { class: 'filter filter-buttons' },
    h('button', { type: 'submit' }, 'Search'),
    h('a', { class: 'button button-quiet', href: '#/calls' }, 'Clear')),
  message);
  // A new status applies at once; the search box waits for Enter or the button.
  statusSelect.addEventListener('change', () => form.requestSubmit());
  return form;
}

function list(page, { status, to, cursor }) {
  const described = [
    status ? `status ${status}` : null,
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
        ['Call', 'To', 'Status', 'Attempts', 'Created', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, page.items.map(row)))));
  }
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  if (cursor) pager.append(h('a', { class: 'button button-quiet', href: `#/calls${query({ status, to })}` }, 'First page'));
  if (page.nextCursor) {
    pager.append(h('a', { class: 'button', href: `#/calls${query({ status, to, cursor: page.nextCursor })}` }, 'Next page'));
  }
  if (pager.childElementCount) nodes.push(pager);
  return nodes;
}

function row(call) {
  return h('tr', { dataset: { callId: call.id, status: call.status } },
    h('td', { 'data-label': 'Call' }, h('a', { href: `#/calls/${call.id}`, 'aria-label': `Call ${call.id}` }, h('code', {}, shortId(call.id)))),
    h('td', { 'data-label': 'To' }, call.to),
    h('td', { 'data-label': 'Status' }, statusBadge(call.status)),
    h('td', { 'data-label': 'Attempts' }, `${call.attempts} of ${call.maxAttempts}`),
    h('td', { 'data-label': 'Created' }, time(call.createdAt)),
    h('td', { 'data-label': 'Last error', class: 'cell-error' }, call.lastError || ''));
}
