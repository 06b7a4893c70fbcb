// The live dashboard: render the snapshot, apply numbered changes (only the fields that
// changed), ask for a fresh snapshot on a gap or a reconnect, and tick uptime / heartbeat
// age between pushes. Only the rows in view are in the document (10,000 engines scroll as
// fast as 10), problems first, filtered by status and searched by symbol.
(function () {
  "use strict";

  const config = window.LEVIPANEL;
  const COUNTED = [
    "running", "crashed", "stopped", "backoff", "failed", "degraded", "halted", "unknown",
  ];
  const ACTIONS = ["start", "stop", "restart"];
  const SHOW_DONE_MS = 4000;
  // Shown first: 0 needs an operator now, 1 is waiting or limited, 2 the rest.
  const RANK = { crashed: 0, failed: 0, unknown: 0, halted: 1, backoff: 1, degraded: 1 };
  const PROBLEMS = new Set(Object.keys(RANK));
  const OVERSCAN = 10; // rows drawn above and below the visible ones
  const COLUMNS = 11;

  const state = {
    engines: new Map(), // symbol -> row
    order: [], // the symbols shown, problems first, filtered
    orderDirty: true,
    flushedAt: null, // server time of the newest heartbeat flush
    rowHeight: 0,
    commands: new Map(), // command id -> command
    runners: [], // every runner, by name
    seq: 0,
    offset: 0, // browser clock minus server clock, in seconds
    canControl: config.canControl,
    socket: null,
    attempts: 0,
    nextClientId: 1,
  };

  const body = document.getElementById("engines");
  const scroller = document.getElementById("engines-scroll");
  const search = document.getElementById("search");
  const statusFilter = document.getElementById("status-filter");
  const shownCount = document.getElementById("shown");
  const rendered = new Map(); // symbol -> its tr, for the rows in view
  const runnersBody = document.getElementById("runners");
  const noRunners = document.getElementById("no-runners");
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");

  // Data ---------------------------------------------------------------------------------

  function serverNow() {
    return Date.now() / 1000 - state.offset;
  }

  function setClock(now) {
    if (typeof now === "number") state.offset = Date.now() / 1000 - now;
  }

  function putEngine(delta) {
    const old = state.engines.get(delta.symbol);
    if (!old) {
      state.engines.set(delta.symbol, delta); // a new engine comes whole
      state.orderDirty = true;
      return;
    }
    if ("status" in delta && delta.status !== old.status) state.orderDirty = true;
    Object.assign(old, delta);
  }

  function putCommand(command) {
    const old = state.commands.get(command.id);
    if (old && old.acked_at && !command.acked_at) return; // never un-acknowledge
    if (command.acked_at && !(old && old.acked_at)) command.seenDone = Date.now();
    else if (old) command.seenDone = old.seenDone;
    state.commands.set(command.id, command);
  }

  function applySnapshot(message) {
    setClock(message.now);
    state.seq = message.seq;
    state.flushedAt = message.flushed_at;
    if (typeof message.can_control === "boolean") state.canControl = message.can_control;
    state.engines = new Map();
    message.engines.forEach((row) => state.engines.set(row.symbol, row));
    state.orderDirty = true;
    if (Array.isArray(message.runners)) state.runners = message.runners;
    const known = state.commands;
    state.commands = new Map();
    message.commands.forEach((command) => putCommand(command));
    // Keep the outcomes already shown; a pending one not in the snapshot is done.
    known.forEach((command, id) => {
      if (command.acked_at && !state.commands.has(id)) state.commands.set(id, command);
    });
    render();
  }

  function applySnapshotMore(message) {
    // A large fleet's snapshot comes in parts, before any change numbered after it.
    if (message.seq !== state.seq) return;
    message.engines.forEach((row) => state.engines.set(row.symbol, row));
    state.orderDirty = true;
    scheduleRender();
  }

  function applyChanges(message) {
    if (message.seq <= state.seq) return; // already in the snapshot
    const gap = message.seq !== state.seq + 1;
    state.seq = message.seq;
    setClock(message.now);
    if (typeof message.flushed_at === "number") state.flushedAt = message.flushed_at;
    message.engines.forEach(putEngine);
    message.commands.forEach(putCommand);
    message.removed.forEach((symbol) => {
      if (state.engines.delete(symbol)) state.orderDirty = true;
    });
    // Sent only when a runner joined, left, went silent or changed what it holds.
    if (Array.isArray(message.runners)) state.runners = message.runners;
    scheduleRender();
    if (gap) send({ type: "snapshot" });
  }

  // Rendering ----------------------------------------------------------------------------

  let renderQueued = false;

  function scheduleRender() {
    // Pushes come faster than frames at times: one render per frame at most.
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    if (state.orderDirty) {
      state.orderDirty = false;
      state.order = ordered();
      renderCounters();
    }
    renderRows();
    renderRunners();
    tick();
  }

  function ordered() {
    const wanted = statusFilter.value;
    const text = search.value.trim().toUpperCase();
    const out = [];
    state.engines.forEach((row, symbol) => {
      if (text && !symbol.includes(text)) return;
      if (wanted === "problems" ? !PROBLEMS.has(row.status) : wanted && row.status !== wanted) {
        return;
      }
      out.push(symbol);
    });
    const rank = (symbol) => RANK[state.engines.get(symbol).status] ?? 2;
    out.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
    setText(shownCount, `${out.length} of ${state.engines.size} engines`);
    return out;
  }

  function renderRows() {
    // Only the rows in view (and a few around them); spacers stand for the rest.
    const height = state.rowHeight || 37;
    const first = Math.max(0, Math.floor(scroller.scrollTop / height) - OVERSCAN);
    const count = Math.ceil(scroller.clientHeight / height) + 2 * OVERSCAN;
    const symbols = state.order.slice(first, first + count);
    const wanted = new Set(symbols);
    rendered.forEach((tr, symbol) => {
      if (!wanted.has(symbol)) {
        tr.remove();
        rendered.delete(symbol);
      }
    });
    let at = topSpacer.nextSibling;
    symbols.forEach((symbol) => {
      let tr = rendered.get(symbol);
      if (!tr) {
        tr = newRow(symbol);
        rendered.set(symbol, tr);
      }
      if (tr !== at) body.insertBefore(tr, at);
      at = tr.nextSibling;
      fillRow(tr, state.engines.get(symbol));
    });
    topSpacer.firstChild.style.height = `${first * height}px`;
    const below = Math.max(0, state.order.length - first - symbols.length);
    bottomSpacer.firstChild.style.height = `${below * height}px`;
    if (!state.rowHeight && symbols.length) state.rowHeight = rendered.get(symbols[0]).offsetHeight;
  }

  function spacer() {
    const tr = document.createElement("tr");
    tr.className = "spacer";
    const td = document.createElement("td");
    td.colSpan = COLUMNS + (config.canControl ? 1 : 0);
    tr.appendChild(td);
    return tr;
  }

  const topSpacer = spacer();
  const bottomSpacer = spacer();
  body.append(topSpacer, bottomSpacer);

  function renderRunners() {
    noRunners.hidden = state.runners.length > 0;
    const names = state.runners.map((runner) => runner.name);
    Array.from(runnersBody.rows).forEach((tr) => {
      if (!names.includes(tr.dataset.runner)) tr.remove();
    });
    state.runners.forEach((runner, index) => {
      let tr = Array.from(runnersBody.rows).find((row) => row.dataset.runner === runner.name);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.runner = runner.name;
        tr.innerHTML =
          '<td class="symbol" data-field="name"></td>' +
          '<td><span class="badge" data-field="state"></span></td><td data-field="host"></td>' +
          '<td class="num" data-field="pid"></td><td class="num" data-field="held"></td>' +
          '<td class="num" data-field="engines"></td><td data-field="started"></td>' +
          '<td class="num" data-field="last_seen"></td>';
      }
      const at = runnersBody.rows[index] || null;
      if (at !== tr) runnersBody.insertBefore(tr, at);
      setText(field(tr, "name"), runner.name);
      const badge = field(tr, "state");
      const shown = runnerState(runner);
      setText(badge, shown);
      badge.className = `badge ${shown}`;
      setText(field(tr, "host"), runner.host || "—");
      setText(field(tr, "pid"), runner.pid === null ? "—" : runner.pid);
      setText(field(tr, "held"), runner.held);
      setText(field(tr, "engines"), runner.engines);
      setText(field(tr, "started"), new Date(runner.started_at * 1000).toLocaleString());
    });
  }

  function runnerState(runner) {
    if (runner.live) return "live";
    return runner.stopped_at ? "stopped" : "silent";
  }

  function renderCounters() {
    // The whole fleet's, whatever the filter shows.
    const counts = {};
    state.engines.forEach((row) => (counts[row.status] = (counts[row.status] || 0) + 1));
    setText(document.querySelector('[data-count="total"]'), state.engines.size);
    COUNTED.forEach((status) => {
      setText(document.querySelector(`[data-count="${status}"]`), counts[status] || 0);
    });
  }

  function newRow(symbol) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = symbol;
    const link = `<a href="/engine/${encodeURIComponent(symbol)}/">${symbol}</a>`;
    tr.innerHTML =
      `<td class="symbol">${link} <span class="broker" data-field="broker"></span></td>` +
      '<td><span class="badge" data-field="status"></span><span class="pending" data-field="pending"></span></td>' +
      '<td data-field="runner"></td>' +
      '<td class="num" data-field="uptime"></td><td class="num" data-field="heartbeat"></td>' +
      '<td class="num" data-field="position"></td><td class="num" data-field="daily_pnl"></td>' +
      '<td class="num" data-field="total_pnl"></td><td class="num" data-field="trade_count"></td>' +
      '<td class="num" data-field="error_count"></td><td class="error" data-field="last_error"></td>';
    if (state.canControl) {
      const td = document.createElement("td");
      td.className = "control";
      ACTIONS.forEach((action) => {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = action[0].toUpperCase() + action.slice(1);
        button.dataset.action = action;
        button.addEventListener("click", () => command(action, tr.dataset.symbol));
        td.appendChild(button);
      });
      tr.appendChild(td);
    }
    return tr;
  }

  function fillRow(tr, row) {
    const broker = field(tr, "broker");
    const mode = row.broker || "paper";
    setText(broker, row.exchange ? `${mode} · ${row.exchange}` : mode);
    broker.className = `broker ${mode}`;
    const badge = field(tr, "status");
    setText(badge, row.status);
    badge.className = `badge ${row.status}`;
    badge.title =
      row.status === "unknown"
        ? "No live runner holds this engine: its runner stopped heart-beating"
        : row.status_reason || "";
    setText(field(tr, "position"), row.position === null ? "—" : number(row.position, 4));
    money(field(tr, "daily_pnl"), row.daily_pnl);
    money(field(tr, "total_pnl"), row.total_pnl);
    setText(field(tr, "trade_count"), row.trade_count);
    setText(field(tr, "error_count"), row.error_count);
    const error = field(tr, "last_error");
    setText(error, row.last_error || "");
    error.title = row.last_error || "";
    const pending = pendingFor(row.symbol);
    const label = field(tr, "pending");
    setText(label, pending.map(describe).join(" · "));
    tr.classList.toggle("has-pending", pending.some((c) => !c.acked_at));
    tr.querySelectorAll("button[data-action]").forEach((button) => {
      const action = button.dataset.action;
      const busy = pending.some((c) => !c.acked_at);
      button.disabled =
        busy ||
        (action === "start" && row.desired_state === "running" && row.status === "running") ||
        (action === "stop" && row.desired_state === "stopped");
    });
  }

  function pendingFor(symbol) {
    const now = Date.now();
    const out = [];
    state.commands.forEach((command, id) => {
      if (command.acked_at && now - command.seenDone > SHOW_DONE_MS) {
        state.commands.delete(id);
      } else if (command.symbol === symbol) {
        out.push(command);
      }
    });
    return out;
  }

  function describe(command) {
    if (!command.acked_at) return `${command.action} pending…`;
    return `${command.action}: ${command.message || command.outcome}`;
  }

  function tick() {
    const now = serverNow();
    rendered.forEach((tr, symbol) => {
      const row = state.engines.get(symbol);
      if (!row) return;
      setText(field(tr, "uptime"), row.started_at ? duration(now - row.started_at) : "—");
      const age = heartbeatAge(row, now);
      const cell = field(tr, "heartbeat");
      setText(cell, age === null ? "—" : ago(age));
      cell.classList.toggle("stale", row.status === "running" && age !== null && age > 10);
      setText(field(tr, "runner"), runnerCell(row, now));
      if (tr.classList.contains("has-pending") || tr.querySelector(".pending").textContent) {
        fillRow(tr, row); // lets a shown outcome fade out
      }
    });
    runnersBody.querySelectorAll("tr").forEach((tr) => {
      const runner = state.runners.find((r) => r.name === tr.dataset.runner);
      if (!runner) return;
      // A live runner's last_seen is pushed only when something else about it changes.
      setText(field(tr, "last_seen"), runner.live ? "now" : ago(now - runner.last_seen));
    });
  }

  function heartbeatAge(row, now) {
    // A fresh heartbeat is not pushed on every flush: it is as old as the last flush. A
    // stale one (over 10 s) is pushed when it turns stale, and counted from itself.
    if (row.last_heartbeat === null || row.last_heartbeat === undefined) return null;
    const beat = row.stale ? row.last_heartbeat : Math.max(row.last_heartbeat, state.flushedAt || 0);
    return Math.max(0, now - beat);
  }

  function runnerCell(row, now) {
    if (row.runner) return row.runner;
    if (row.runner_last_seen === null || row.runner_last_seen === undefined) return "—";
    return `none (runner last seen ${ago(now - row.runner_last_seen)})`;
  }

  function ago(seconds) {
    const age = Math.max(0, seconds);
    return `${age < 60 ? age.toFixed(1) + " s" : duration(age)} ago`;
  }

  function field(tr, name) {
    return tr.querySelector(`[data-field="${name}"]`);
  }

  function setText(element, value) {
    const text = String(value);
    if (element && element.textContent !== text) element.textContent = text;
  }

  function number(value, digits) {
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function money(element, value) {
    setText(element, Number(value).toFixed(2));
    element.classList.toggle("pos", value > 0);
    element.classList.toggle("neg", value < 0);
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${pad(h)}h ${pad(m)}m`;
    if (h) return `${h}h ${pad(m)}m ${pad(s % 60)}s`;
    return `${m}m ${pad(s % 60)}s`;
  }

  function showFlash(message) {
    flash.textContent = message;
    flash.hidden = false;
    flash.className = "flash error";
    clearTimeout(showFlash.timer);
    showFlash.timer = setTimeout(() => (flash.hidden = true), 6000);
  }

  // The websocket ------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
    state.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      state.attempts = 0;
      setLive(true);
    };
    socket.onmessage = (event) => receive(JSON.parse(event.data));
    socket.onclose = () => {
      setLive(false);
      // daphne closes websockets after a day, networks drop: come back by itself.
      // At most 4 s apart: a push is back within 5 s of the server (or Redis) coming back.
      const delay = Math.min(4000, 500 * 2 ** state.attempts++);
      setTimeout(opened ? connect : reconnectOrLogIn, delay);
    };
  }

  async function reconnectOrLogIn() {
    // A refused websocket does not say why: ask the page itself whether the session is gone
    // (logged out, expired), and go to the login page instead of retrying for ever.
    try {
      const response = await fetch(location.pathname, { redirect: "manual", cache: "no-store" });
      if (response.type === "opaqueredirect") {
        location.assign(`/login/?next=${encodeURI(location.pathname)}`);
        return;
      }
    } catch (error) {
      // The server is away: keep trying.
    }
    connect();
  }

  function receive(message) {
    if (message.type === "snapshot") applySnapshot(message);
    else if (message.type === "snapshot_more") applySnapshotMore(message);
    else if (message.type === "changes") applyChanges(message);
    else if (message.type === "command") {
      putCommand(message.command);
      scheduleRender();
    } else if (message.type === "error") showFlash(message.message);
  }

  function send(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function command(action, symbol) {
    const id = `c${state.nextClientId++}`;
    if (!send({ type: "command", action, symbol, id })) {
      showFlash("Not connected: try again in a moment.");
    }
  }

  function setLive(on) {
    live.textContent = on ? "live" : "reconnecting…";
    live.classList.toggle("off", !on);
  }

  const killSwitch = document.getElementById("kill-switch");
  if (killSwitch) {
    killSwitch.addEventListener("submit", (event) => {
      const closing = killSwitch.querySelector("input[name=close_positions]").checked;
      const question =
        "Stop every live and testnet engine now" +
        (closing ? " and close their positions at market?" : "?");
      if (!window.confirm(question)) event.preventDefault();
    });
  }

  function refilter() {
    state.orderDirty = true;
    scroller.scrollTop = 0;
    scheduleRender();
  }

  search.addEventListener("input", refilter);
  statusFilter.addEventListener("change", refilter);
  document.querySelectorAll(".counter[data-filter]").forEach((counter) => {
    counter.addEventListener("click", () => {
      statusFilter.value = counter.dataset.filter;
      refilter();
    });
  });
  scroller.addEventListener("scroll", scheduleRender, { passive: true });
  window.addEventListener("resize", scheduleRender);

  applySnapshot(JSON.parse(document.getElementById("snapshot").textContent));
  setInterval(tick, 500);
  connect();
})();
