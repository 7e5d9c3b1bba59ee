// tally console: plain JavaScript over the public API. Amounts stay the decimal strings the
// API sends; they are never parsed as numbers, except to place the chart's line (see draw).
'use strict';

const $ = (id) => document.getElementById(id);
const tokenKey = 'tally-token';
const state = {
  user: null,       // the user shown: the API's JSON
  historyCursor: null,
  findCursor: null,
  findPrefix: '',
  points: [],       // the chart's points, as the API sent them
  plot: null,
  lastPost: null,   // {body, first}: the last form post, for "send again"
  canWrite: true,
};

// api sends one request with the session's token and returns the status, the parsed body, the
// raw text and the headers. A 401 asks for a token.
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(tokenKey);
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = null; }
  if (res.status === 401) askToken(token ? 'That token was not accepted.' : '');
  return { status: res.status, data, text, headers: res.headers };
}

// words turns a problem into a sentence a person can act on.
function words(r) {
  const p = r.data || {};
  const detail = p.detail || r.text || 'no details';
  switch (r.status) {
    case 402: return 'Refused, insufficient funds (402): ' + detail;
    case 422: return 'Not accepted (422' + (p.field ? ', ' + p.field : '') + '): ' + detail;
    case 404: return 'Not found (404): ' + detail;
    case 403: return 'Not allowed (403): ' + detail;
    case 401: return 'A token is needed (401).';
    default: return (p.title || 'Error') + ' (' + r.status + '): ' + detail;
  }
}

function text(el, s) { el.textContent = s; return el; }
function cell(row, s, cls) {
  const td = row.insertCell();
  td.textContent = s;
  if (cls) td.className = cls;
  return td;
}

// A datetime-local value has no zone; the labels say UTC and the API reads it as UTC.
function localInput(iso) { return iso ? iso.replace(/Z$/, '').replace(/\.\d+$/, '').slice(0, 19) : ''; }
function shortTime(iso) { return iso.replace('T', ' ').replace('Z', ' UTC'); }

// --- access --------------------------------------------------------------------------------

function askToken(message) {
  $('token-section').hidden = false;
  text($('token-error'), message || '');
  $('token').focus();
}

$('token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(tokenKey, $('token').value);
  $('token').value = '';
  const ok = await checkAccess();
  if (ok) route();
});

// checkAccess learns what this session may do from the public API alone: a read answers 401
// without a good token; an empty POST /v1/user is refused before anything is created, with 403
// for a read-only token and 422 (no name) for a token that may write.
async function checkAccess() {
  const read = await api('GET', '/v1/users?limit=1');
  if (read.status === 401) return false;
  $('token-section').hidden = true;
  const probe = await api('POST', '/v1/user', {});
  state.canWrite = probe.status !== 403 && probe.status !== 401;
  const token = sessionStorage.getItem(tokenKey) !== null;
  text($('access'), (token ? 'Signed in with a token that may ' : 'Open access: you may ') +
    (state.canWrite ? 'read and write.' : 'only read.'));
  $('post-section').hidden = !state.canWrite;
  return true;
}

// --- find ----------------------------------------------------------------------------------

$('find-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = $('find').value.trim();
  if (/^[1-9][0-9]*$/.test(q)) {
    go('/console/users/' + q);
    return;
  }
  state.findPrefix = q;
  state.findCursor = null;
  $('find-results').replaceChildren();
  findPage();
});

$('find-more').addEventListener('click', () => findPage());

async function findPage() {
  let path = '/v1/users?limit=20&name=' + encodeURIComponent(state.findPrefix);
  if (state.findCursor) path += '&cursor=' + encodeURIComponent(state.findCursor);
  const r = await api('GET', path);
  if (r.status !== 200) { text($('find-status'), words(r)); return; }
  for (const u of r.data.items) {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = '/console/users/' + u.id;
    a.textContent = u.name;
    li.append(a, ' (id ' + u.id + ', balance ' + u.balance + ')');
    $('find-results').append(li);
  }
  const n = $('find-results').children.length;
  text($('find-status'), n === 0 ? 'No user has a name starting with “' + state.findPrefix + '”.' : n + ' users shown.');
  state.findCursor = r.data.next_cursor;
  $('find-more').hidden = !state.findCursor;
}

$('find-results').addEventListener('click', (ev) => {
  const a = ev.target.closest('a');
  if (!a) return;
  ev.preventDefault();
  go(a.getAttribute('href'));
});

// --- navigation ----------------------------------------------------------------------------

function go(path) {
  history.pushState(null, '', path);
  route();
}
window.addEventListener('popstate', route);

async function route() {
  const m = location.pathname.match(/^\/console\/users\/([^/]+)$/);
  if (!m) { $('user-section').hidden = true; state.user = null; return; }
  await openUser(decodeURIComponent(m[1]));
}

async function openUser(id) {
  const r = await api('GET', '/v1/user/' + encodeURIComponent(id));
  if (r.status !== 200) {
    $('user-section').hidden = true;
    state.user = null;
    if (r.status !== 401) text($('find-status'), words(r));
    return;
  }
  const fresh = !state.user || state.user.id !== r.data.id;
  showUser(r.data);
  $('user-section').hidden = false;
  if (fresh) {
    $('range-from').value = '';
    $('range-to').value = '';
    text($('at-result'), '');
    $('post-result').replaceChildren();
    state.lastPost = null;
    $('post-again').disabled = true;
    newUID();
    document.title = r.data.name + ' · tally console';
  }
  await Promise.all([drawChart(), loadHistory(true)]);
}

function showUser(u) {
  state.user = u;
  text($('user-name'), u.name);
  text($('user-id'), String(u.id));
  text($('user-balance'), u.balance);
  text($('user-created'), shortTime(u.created_at));
}

async function refreshUser() {
  const r = await api('GET', '/v1/user/' + state.user.id);
  if (r.status === 200) showUser(r.data);
  await Promise.all([drawChart(), loadHistory(true)]);
}

// --- chart ---------------------------------------------------------------------------------

$('range-form').addEventListener('submit', (ev) => { ev.preventDefault(); drawChart(); });
$('range-all').addEventListener('click', () => {
  $('range-from').value = '';
  $('range-to').value = '';
  drawChart();
});

async function drawChart() {
  const u = state.user;
  let path = '/v1/user/' + u.id + '/balance/series?points=200';
  if ($('range-from').value) path += '&from=' + encodeURIComponent($('range-from').value);
  if ($('range-to').value) path += '&to=' + encodeURIComponent($('range-to').value);
  const r = await api('GET', path);
  if (r.status !== 200) { text($('chart-status'), words(r)); return; }
  state.points = r.data.points;
  text($('chart-status'), r.data.points.length + ' points from ' + shortTime(r.data.from) + ' to ' + shortTime(r.data.to) + '.');
  const body = $('chart-table').tBodies[0];
  body.replaceChildren();
  for (const p of state.points) {
    const row = body.insertRow();
    cell(row, shortTime(p.at));
    cell(row, p.balance, 'amount');
    cell(row, p.transaction ? describe(p.transaction) : 'no transaction yet');
  }
  draw();
  $('chart-point').max = String(state.points.length - 1);
  $('chart-point').value = String(state.points.length - 1);
  showPoint(state.points.length - 1);
}

function describe(t) {
  return t.type + ' ' + t.amount + ' at ' + shortTime(t.timestamp) + ' (uid ' + t.uid + ')';
}

// showPoint writes what the chart shows at point i, in the API's exact strings.
function showPoint(i) {
  const p = state.points[i];
  if (!p) { text($('chart-hover'), ''); return; }
  text($('chart-hover'), 'At ' + shortTime(p.at) + ': balance ' + p.balance + '; ' +
    (p.transaction ? 'set by ' + describe(p.transaction) : 'before the first transaction') + '.');
}

$('chart-point').addEventListener('input', () => {
  const i = Number($('chart-point').value);
  showPoint(i);
  if (state.plot) state.plot.setCursor({ left: state.plot.valToPos(state.plot.data[0][i], 'x'), top: 10 });
});

function draw() {
  const el = $('chart');
  const xs = state.points.map((p) => Date.parse(p.at) / 1000);
  // Drawing only: the line's height is a float of the balance, which may round beyond 2^53
  // cents. Every text the page shows (hover, table) is the API's exact decimal string.
  const ys = state.points.map((p) => parseFloat(p.balance));
  const width = Math.max(280, el.clientWidth || 600);
  const opts = {
    width, height: 240,
    legend: { show: false },
    scales: { x: { time: true } },
    axes: [{}, { size: 70 }],
    series: [{}, {
      label: 'Balance', stroke: '#1f6feb', width: 2, fill: 'rgba(31,111,235,0.08)',
      paths: uPlot.paths.stepped({ align: 1 }),
      points: { show: false },
    }],
    hooks: {
      setCursor: [(plot) => {
        const i = plot.cursor.idx;
        if (i != null) { showPoint(i); $('chart-point').value = String(i); }
      }],
    },
  };
  if (state.plot) state.plot.destroy();
  el.replaceChildren();
  state.plot = new uPlot(opts, [xs, ys], el);
  el.dataset.points = String(xs.length);
}

window.addEventListener('resize', () => {
  if (state.plot) state.plot.setSize({ width: Math.max(280, $('chart').clientWidth), height: 240 });
});

// --- balance at ----------------------------------------------------------------------------

$('at-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const at = $('at').value;
  const r = await api('GET', '/v1/user/' + state.user.id + '/balance?date=' + encodeURIComponent(at));
  if (r.status !== 200) { text($('at-result'), words(r)); return; }
  text($('at-result'), 'Balance at ' + shortTime(r.data.as_of) + ': ' + r.data.balance);
  $('at-result').dataset.balance = r.data.balance;
});

// --- history -------------------------------------------------------------------------------

$('history-more').addEventListener('click', () => loadHistory(false));

async function loadHistory(first) {
  let path = '/v1/user/' + state.user.id + '/transactions?status=ALL&limit=50';
  if (!first && state.historyCursor) path += '&cursor=' + encodeURIComponent(state.historyCursor);
  const r = await api('GET', path);
  const body = $('history-table').tBodies[0];
  if (first) body.replaceChildren();
  if (r.status !== 200) { const row = body.insertRow(); cell(row, words(r)).colSpan = 6; return; }
  for (const t of r.data.items) {
    const row = body.insertRow();
    row.dataset.uid = t.uid;
    row.dataset.status = t.status;
    if (t.status !== 'APPLIED') row.className = 'refused';
    cell(row, shortTime(t.timestamp));
    cell(row, t.type);
    cell(row, t.amount, 'amount');
    cell(row, t.balance_after === null ? '—' : t.balance_after, 'amount');
    cell(row, t.status === 'APPLIED' ? 'applied' : 'REFUSED: ' + t.reason.replace(/_/g, ' '));
    cell(row, t.uid, 'uid');
  }
  state.historyCursor = r.data.next_cursor;
  $('history-more').hidden = !state.historyCursor;
}

// --- post ----------------------------------------------------------------------------------

function newUID() { text($('post-uid'), crypto.randomUUID()); }

$('post-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = {
    uid: $('post-uid').textContent,
    user_id: String(state.user.id),
    type: $('post-type').value,
    amount: $('post-amount').value.trim(), // sent as the string typed: the API parses it exactly
  };
  if ($('post-time').value) body.timestamp = $('post-time').value;
  const r = await api('POST', '/v1/transaction', body);
  state.lastPost = { body, first: r.text };
  $('post-again').disabled = false;
  showPost(r, false);
  newUID();
  if (r.status === 200 || r.status === 402 || r.status === 422) await refreshUser();
});

$('post-again').addEventListener('click', async () => {
  if (!state.lastPost) return;
  const r = await api('POST', '/v1/transaction', state.lastPost.body);
  showPost(r, true);
});

function showPost(r, again) {
  const out = $('post-result');
  out.replaceChildren();
  const p = document.createElement('p');
  const t = r.status === 200 ? r.data : (r.data && r.data.transaction);
  if (r.status === 200) {
    p.textContent = 'Applied (200): ' + t.type + ' ' + t.amount + ', balance after ' + t.balance_after + '.';
  } else {
    p.textContent = words(r);
  }
  p.className = r.status === 200 ? 'ok' : 'problem';
  out.append(p);
  const facts = document.createElement('p');
  facts.id = 'post-facts';
  facts.dataset.status = String(r.status);
  facts.dataset.replayed = r.headers.get('Idempotent-Replayed') === 'true' ? 'true' : 'false';
  let s = 'uid ' + (again ? state.lastPost.body.uid : (t ? t.uid : state.lastPost.body.uid)) + '; status ' + r.status + '; ';
  s += 'Idempotent-Replayed: ' + (r.headers.get('Idempotent-Replayed') || 'absent');
  if (again) s += r.text === state.lastPost.first ? '; the same answer as the first, byte for byte.' : '; an answer that differs from the first.';
  facts.textContent = s;
  out.append(facts);
}

// --- events --------------------------------------------------------------------------------

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const maxEvents = 100;

// followEvents starts at the feed's newest event (cursor=end) and long-polls, so that new
// events appear as they commit; the history before it stays on the server. On a deployment
// whose feed is per user (Citus: the feed refuses a request without user_id), it follows the
// user named in the filter, from that user's newest event on.
async function followEvents() {
  let cursor = 'end';
  let caughtUp = true;
  let perUser = false;
  let followed = '';
  text($('events-status'), 'Following: new events appear as they commit.');
  $('events').dataset.following = 'true';
  for (;;) {
    if (!$('events-follow').checked) { await sleep(300); continue; }
    if (perUser) {
      const id = $('events-user').value.trim();
      if (!/^[1-9][0-9]{0,18}$/.test(id)) {
        delete $('events').dataset.following;
        text($('events-status'), 'This deployment keeps one feed per user: enter a user id to follow.');
        await sleep(300);
        continue;
      }
      if (id !== followed) {
        followed = id;
        cursor = 'end';
        caughtUp = true;
        text($('events-status'), 'Following user ' + id + ': new events appear as they commit.');
        $('events').dataset.following = 'true';
      }
    }
    let path = '/v1/events?limit=1000&wait=' + (caughtUp ? '20' : '0');
    if (perUser) path += '&user_id=' + encodeURIComponent(followed);
    if (cursor) path += '&cursor=' + encodeURIComponent(cursor);
    let r;
    try { r = await api('GET', path); } catch (e) { r = { status: 0, data: null, text: String(e) }; }
    if (r.status === 422 && !perUser && r.text.includes('user_id is required')) {
      perUser = true;
      continue;
    }
    if (r.status !== 200) {
      text($('events-status'), 'The feed answered: ' + words(r) + ' Retrying.');
      if (r.status === 410 || r.status === 409) cursor = 'end';
      await sleep(2000);
      continue;
    }
    for (const e of r.data.events) addEvent(e);
    cursor = r.data.next_cursor;
    if (r.data.events.length === 0 && !caughtUp) {
      caughtUp = true;
      text($('events-status'), 'Following: new events appear as they commit.');
      $('events').dataset.following = 'true';
    }
  }
}

function addEvent(e) {
  const li = document.createElement('li');
  li.dataset.subject = e.subject;
  li.dataset.type = e.type;
  const d = e.data || {};
  let s = shortTime(e.time) + ' ' + e.type.replace(/^tally\./, '') + ' ' + e.subject;
  if (d.amount) s += ': ' + d.type + ' ' + d.amount;
  if (d.reason) s += ' refused (' + d.reason.replace(/_/g, ' ') + ')';
  s += '; balance ' + d.balance;
  li.textContent = s;
  li.hidden = !matchesFilter(li);
  $('events').prepend(li);
  while ($('events').children.length > maxEvents) $('events').lastElementChild.remove();
}

function matchesFilter(li) {
  const id = $('events-user').value.trim();
  return id === '' || li.dataset.subject === 'users/' + id;
}

$('events-user').addEventListener('input', () => {
  for (const li of $('events').children) li.hidden = !matchesFilter(li);
});
$('events-form').addEventListener('submit', (ev) => ev.preventDefault());

// --- start ---------------------------------------------------------------------------------

// The access check and the user's page load side by side; without a token both stop at the
// prompt, and the page loads once a token is accepted.
(async () => {
  const [ok] = await Promise.all([checkAccess(), route()]);
  if (ok) {
    followEvents();
    return;
  }
  const wait = setInterval(() => {
    if ($('token-section').hidden) { clearInterval(wait); followEvents(); }
  }, 300);
})();
