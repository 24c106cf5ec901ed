// Campaigns: the list, newest first, paged by cursor (#/campaigns?cursor=...). Each links to
// its page (progress, failures, actions) and to its calls in the calls list.

import { api, query } from '../api.js';
import { h, statusBadge, time, problemBox } from '../ui.js';

const PAGE_SIZE = 25;

export const title = 'Campaigns';

export async function render(main, view) {
  const cursor = view.params.get('cursor') || '';
  const results = h('div', { class: 'results', 'aria-live': 'polite' });
  main.replaceChildren(h('h1', { tabindex: '-1' }, 'Campaigns'),
    h('p', { class: 'muted' }, 'Campaigns are created and given calls through the API (', h('code', {}, 'POST /campaigns'),
      ', ', h('code', {}, 'POST /campaigns/{id}/calls'), ') or ', h('code', {}, 'ebra import'), '.'),
    results);
  let page;
  try {
    page = await api(`campaigns${query({ cursor, pageSize: PAGE_SIZE })}`, { signal: view.signal });
  } catch (error) {
    if (error.name === 'AbortError' || view.handle(error)) return;
    results.replaceChildren(problemBox(error, { heading: 'The list was refused' }));
    return;
  }
  const nodes = [];
  if (!page.items.length) {
    nodes.push(h('p', { class: 'empty' }, cursor ? 'No more campaigns.' : 'No campaigns yet.'));
  } else {
    nodes.push(h('div', { class: 'table-wrap' }, h('table', { class: 'calls-table campaigns-table' },
      h('caption', { class: 'visually-hidden' }, 'Campaigns, newest first'),
      h('thead', {}, h('tr', {},
        ['Campaign', 'Status', 'Max concurrency', 'Script', 'Created', 'Calls'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, page.items.map(row)))));
  }
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  if (cursor) pager.append(h('a', { class: 'button button-quiet', href: '#/campaigns' }, 'First page'));
  if (page.nextCursor) pager.append(h('a', { class: 'button', href: `#/campaigns${query({ cursor: page.nextCursor })}` }, 'Next page'));
  if (pager.childElementCount) nodes.push(pager);
  results.replaceChildren(...nodes);
}

function row(c) {
  return h('tr', { dataset: { campaignId: c.id, status: c.status } },
    h('td', { 'data-label': 'Campaign' }, h('a', { href: `#/campaigns/${c.id}` }, c.name)),
    h('td', { 'data-label': 'Status' }, statusBadge(c.status)),
    h('td', { 'data-label': 'Max concurrency' }, c.maxConcurrency === null ? h('span', { class: 'muted' }, 'the global cap') : String(c.maxConcurrency)),
    h('td', { 'data-label': 'Script' }, c.scriptId ? h('code', {}, c.scriptId) : h('span', { class: 'muted' }, '—')),
    h('td', { 'data-label': 'Created' }, time(c.createdAt)),
    h('td', { 'data-label': 'Calls' }, h('a', { href: `#/calls${query({ campaignId: c.id })}`, 'aria-label': `Calls of ${c.name}` }, 'Its calls')));
}
