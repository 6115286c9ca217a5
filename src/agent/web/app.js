// godwitd's fleet page: fetches /api/fleet every REFRESH_MS and draws it.
// Everything that comes from etcd is put in the page as text (textContent,
// attribute values), never as markup.
'use strict';

const REFRESH_MS = 1500;
const MiB = 1024 * 1024;

// el('td', {class: 'num'}, 'text' | node, ...): an element with attributes and children.
function el(tag, attrs, ...kids) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs || {}))
		if (v !== null && v !== undefined)
			e.setAttribute(k, String(v));
	for (const k of kids)
		if (k !== null && k !== undefined)
			e.append(k instanceof Node ? k : String(k));
	return e;
}

function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }
function str(v) { return typeof v === 'string' ? v : (v === null || v === undefined ? '' : String(v)); }
// a CSS class from a state word (only [a-z-] gets through)
function cls(prefix, s) { return /^[a-z-]{1,32}$/.test(str(s)) ? prefix + s : ''; }

function mib(b) { return num(b) === null ? '-' : (b / MiB).toFixed(b < 10 * MiB ? 1 : 0) + ' MiB'; }
function ms(v) {
	v = num(v);
	if (v === null) return '-';
	return v >= 10000 ? (v / 1000).toFixed(1) + ' s' : v.toFixed(v < 10 ? 2 : 0) + ' ms';
}
function rate(bps) { return num(bps) === null ? '-' : (bps / MiB).toFixed(1) + ' MiB/s'; }

function usage(used, cap, text) {
	const td = el('td', { class: 'usage' });
	if (num(used) !== null && num(cap) !== null && cap > 0)
		td.append(el('meter', { min: 0, max: cap, value: Math.min(used, cap),
					high: cap * 0.9 }));
	td.append(text);
	return td;
}

function replaceRows(table, rows, cols, empty) {
	const tb = document.querySelector(table + ' tbody');
	if (!rows.length)
		rows = [el('tr', { class: 'empty' }, el('td', { colspan: cols }, empty))];
	tb.replaceChildren(...rows);
}

function drawHosts(hosts) {
	replaceRows('#hosts', hosts.map(h => {
		const state = str(h.state) + (h.cordoned ? ', cordoned' : '');
		const vms = Array.isArray(h.vms) ? h.vms.map(str) : [];
		return el('tr', { 'data-host': str(h.name) },
			el('td', { class: 'name' }, str(h.name)),
			el('td', { class: 'state ' + cls('state-', h.state) }, state),
			el('td', { class: 'vms', title: vms.join(' ') }, String(vms.length)),
			usage(h.mem_used, h.mem_capacity,
			      mib(h.mem_used) + ' / ' + mib(h.mem_capacity)),
			usage(h.cpus_used, h.cpu_capacity,
			      str(h.cpus_used) + ' / ' + str(h.cpu_capacity)),
			el('td', { class: 'addr' }, str(h.addr)));
	}), 6, 'no hosts');
}

function drawVms(vms) {
	replaceRows('#vms', vms.map(v => {
		const m = v.migration && typeof v.migration === 'object' ?
			str(v.migration.phase) + ' \u2192 ' + str(v.migration.to) : '';
		return el('tr', { 'data-vm': str(v.name) },
			el('td', { class: 'name' }, str(v.name)),
			el('td', { class: 'host' }, str(v.host)),
			el('td', { class: 'epoch num' }, num(v.epoch) === null ? '-' : String(v.epoch)),
			el('td', { class: 'state ' + cls('state-', v.state) }, str(v.state)),
			el('td', { class: 'mem num' }, mib(v.mem)),
			el('td', { class: 'cpus num' }, num(v.cpus) === null ? '-' : String(v.cpus)),
			el('td', { class: 'migration' }, m),
			el('td', { class: 'error' }, str(v.error)));
	}), 8, 'no VMs');
}

function drawInFlight(migs) {
	replaceRows('#inflight', migs.map(m => {
		const r = m.report || {};
		const pct = num(m.percent);
		const prog = el('td', { class: 'percent' });
		if (pct !== null) {
			prog.append(el('meter', { min: 0, max: 100, value: pct }));
			prog.append(pct.toFixed(1) + ' %');
		} else {
			prog.append('-');
		}
		return el('tr', { 'data-vm': str(m.vm) },
			el('td', { class: 'name' }, str(m.vm)),
			el('td', { class: 'route' }, str(m.from) + ' \u2192 ' + str(m.to)),
			el('td', { class: 'phase' }, str(m.phase) + (r.status ? ' (' + str(r.status) + ')' : '')),
			prog,
			el('td', { class: 'rate num' }, rate(r.bandwidth_bps)),
			el('td', { class: 'downtime num' }, ms(r.expected_downtime_ms)),
			el('td', { class: 'started' }, str(m.started)));
	}), 7, 'none');
}

// The report's rounds and phases as tables: when the agent draws no picture.
function reportTables(r) {
	const box = el('div', { class: 'timeline-table' });
	const hist = Array.isArray(r.history) ? r.history : [];
	const keys = [];
	for (const h of hist)
		for (const k of Object.keys(h || {}))
			if (!keys.includes(k) && keys.length < 12)
				keys.push(k);
	if (keys.length) {
		box.append(el('table', { class: 'rounds' },
			el('thead', {}, el('tr', {}, ...keys.map(k => el('th', {}, k)))),
			el('tbody', {}, ...hist.map(h => el('tr', {},
				...keys.map(k => el('td', { class: 'num' }, str((h || {})[k]))))))));
	}
	if (r.phases_ms && typeof r.phases_ms === 'object' && Object.keys(r.phases_ms).length) {
		box.append(el('table', { class: 'phases' },
			el('thead', {}, el('tr', {}, el('th', {}, 'phase'), el('th', {}, 'ms'))),
			el('tbody', {}, ...Object.entries(r.phases_ms).map(([k, v]) =>
				el('tr', {}, el('td', {}, k), el('td', { class: 'num' }, ms(v)))))));
	}
	if (!box.childNodes.length)
		box.append(el('p', { class: 'note' }, 'no per-round history in this report'));
	return box;
}

// The done migrations are drawn again only when they change (their pictures stay loaded).
let doneKey = null;

function drawDone(migs) {
	const key = JSON.stringify(migs);
	if (key === doneKey)
		return;
	doneKey = key;
	const box = document.getElementById('done');
	const cards = migs.map(m => {
		const r = m.report || {};
		const outcome = str(m.phase);
		const dl = el('dl', {},
			el('dt', {}, 'outcome'), el('dd', { class: 'outcome ' + cls('outcome-', outcome) }, outcome),
			el('dt', {}, 'total time'), el('dd', { class: 'total' }, ms(r.total_ms)),
			el('dt', {}, 'downtime'), el('dd', { class: 'downtime' }, ms(r.downtime_ms)),
			el('dt', {}, 'sent'), el('dd', { class: 'bytes' }, mib(r.bytes)),
			el('dt', {}, 'rounds'), el('dd', { class: 'rounds' }, str(r.rounds)),
			el('dt', {}, 'epoch'), el('dd', { class: 'epoch' }, str(m.epoch)),
			el('dt', {}, 'started'), el('dd', {}, str(m.started)),
			el('dt', {}, 'ended'), el('dd', {}, str(m.ended)));
		if (m.error)
			dl.append(el('dt', {}, 'error'), el('dd', { class: 'error' }, str(m.error)));
		const tl = el('div', { class: 'timeline' });
		const url = str(m.timeline);
		if (/^\/api\/migrations\/[A-Za-z0-9._-]{1,63}\/timeline\.svg$/.test(url)) {
			const img = el('img', { src: url, alt: 'timeline of the migration of ' + str(m.vm) });
			img.addEventListener('load', () => img.setAttribute('data-loaded', img.naturalWidth > 0 ? '1' : '0'));
			img.addEventListener('error', () => img.setAttribute('data-loaded', '0'));
			tl.append(img);
		} else {
			tl.append(reportTables(r));
		}
		return el('div', { class: 'mig', 'data-vm': str(m.vm), 'data-id': str(m.id) },
			el('h3', {}, str(m.vm) + ': ' + str(m.from) + ' \u2192 ' + str(m.to)),
			dl, tl);
	});
	if (!cards.length)
		cards.push(el('p', { class: 'note empty' }, 'none'));
	box.replaceChildren(...cards);
}

function draw(f) {
	const migs = Array.isArray(f.migrations) ? f.migrations : [];
	drawHosts(Array.isArray(f.hosts) ? f.hosts : []);
	drawVms(Array.isArray(f.vms) ? f.vms : []);
	drawInFlight(migs.filter(m => m.in_flight === true));
	// the latest first (ISO 8601 times sort as text)
	drawDone(migs.filter(m => m.in_flight !== true)
		.sort((x, y) => str(y.ended).localeCompare(str(x.ended))));
	document.getElementById('meta').textContent = 'etcd revision ' + str(f.revision) +
		', from host ' + str(f.self) + ', at ' + new Date().toLocaleTimeString();
	document.body.setAttribute('data-revision', str(f.revision));
}

async function refresh() {
	const err = document.getElementById('error');
	try {
		const r = await fetch('/api/fleet', { cache: 'no-store' });
		const j = await r.json();
		if (!r.ok)
			throw new Error(str(j.error) || 'HTTP ' + r.status);
		draw(j);
		err.hidden = true;
	} catch (e) {
		err.textContent = 'cannot refresh: ' + str(e.message) + ' (showing what was read before)';
		err.hidden = false;
	}
	setTimeout(refresh, REFRESH_MS);
}

refresh();
