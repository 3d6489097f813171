// The browser side of the WebSocket console (sidecar/console/protocol.ts; README.md "WebSocket console").
// A plain script, no bundler: xterm.js and the fit addon are loaded before it as
// UMD scripts and put `Terminal` and `FitAddon` on window. The page's CSP allows
// scripts from 'self' only, so nothing here may use eval or inline handlers.
// One file of about 620 lines on purpose: with no bundler, every split is one more
// request and one more asset to serve under the CSP, for a page that loads once.
(() => {
  const guest = document.body.dataset.guest ?? '';
  const byId = (id) => {
    const el = document.getElementById(id);
    if (el === null) throw new Error(`console page: #${id} missing`);
    return el;
  };
  const ui = {
    status: byId('status'),
    boot: byId('boot'),
    mode: byId('mode'),
    viewers: byId('viewers'),
    skipped: byId('skipped'),
    guestState: byId('guest-state'),
    notice: byId('notice'),
    takeLock: byId('take-lock'),
    release: byId('release'),
    download: byId('download'),
    reconnect: byId('reconnect'),
    terminal: byId('terminal'),
    authForm: byId('auth-form'),
    authReason: byId('auth-reason'),
    tokenInput: byId('token-input'),
  };

  // Timings.
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_CAP_MS = 30_000;
  const PING_INTERVAL_MS = 20_000;
  // No frame at all (not even a pong) for this long: the connection is dead even if
  // TCP has not noticed yet (a laptop that slept, a proxy that dropped the flow).
  const STALE_AFTER_MS = 3 * PING_INTERVAL_MS;
  const NOTICE_MS = 8000;

  // The close-code table of sidecar/console/protocol.ts, put on window by
  // protocol-table.js (written from that module at build time, loaded before this).
  const protocol = window.consoledProtocol;
  if (protocol === undefined) throw new Error('console page: protocol-table.js missing');
  const errorCodePattern = new RegExp(protocol.errorCodePattern);
  const MAX_KEYSTROKE_FRAME_BYTES = protocol.maxKeystrokeFrameBytes;
  // Closes that a new token can fix: ask for one instead of retrying.
  const AUTH_CODES = new Set([
    'UNAUTHORIZED',
    'TOKEN_INVALID',
    'TOKEN_EXPIRED',
    'TOKEN_WRONG_GUEST',
    'TOKEN_WRONG_MODE',
    'TOKEN_REUSED',
    'TOKEN_REVOKED',
  ]);
  // Closes that retrying cannot fix, and the idle timeout (retrying by itself would
  // defeat it): the page stops and offers a Reconnect button.
  const FINAL_CODES = new Set([
    'ORIGIN_FORBIDDEN',
    'FORBIDDEN',
    'BAD_GUEST_ID',
    'BAD_REQUEST',
    'NOT_FOUND',
    'IDLE_TIMEOUT',
  ]);

  /** Everything the page knows; `window.consoled.state`, read by tests. */
  const state = {
    /** 'connecting' | 'authenticating' | 'connected' | 'reconnecting' | 'need-token' | 'closed' */
    status: 'connecting',
    guest,
    viewerId: null,
    /** Mode granted by the server: 'ro' | 'rw'. */
    mode: null,
    boot: null,
    /** Offset of the next byte expected from the server; null before the first welcome. */
    offset: null,
    /** `{viewerId, name}` of the lock holder, or null. */
    writer: null,
    viewers: null,
    canTakeover: false,
    resizable: false,
    /** Total bytes this page did not get: `skipped` messages plus gaps on resume. */
    skippedBytes: 0,
    /** 'connected' | 'disconnected' | 'detached' | null (not told yet) */
    guestState: null,
    /** Connections opened after the first. */
    reconnects: 0,
    /** Last close or error code. */
    lastError: null,
    hasToken: false,
    /** Bytes xterm.js produced by itself (answers to queries, focus reports) and the page did not send. */
    answersDropped: 0,
    /** false when this xterm.js cannot tell typed input from its own answers: the page then sends nothing. */
    keyboard: true,
    /** Tokens renewed in band (README "Tokens"). */
    renewals: 0,
    /** When the token in use expires (ISO, from the server's last `token` message), or null. */
    tokenExpiresAt: null,
  };

  // --- token: from the URL fragment (never sent to any server), else this tab's
  // session storage, else none (a server running without auth accepts that).
  const params = new URLSearchParams(location.hash.slice(1));
  const storageKey = `consoled-token:${guest}`;
  let token = params.get('token');
  const wantMode = params.get('mode') === 'ro' || params.get('mode') === 'rw' ? params.get('mode') : null;
  if (location.hash !== '') {
    // Keep the token out of the address bar, history, bookmarks and screenshots.
    history.replaceState(null, '', location.pathname + location.search);
  }
  if (token === null || token === '') token = readStoredToken();
  saveToken(token);

  function readStoredToken() {
    try {
      return sessionStorage.getItem(storageKey);
    } catch {
      return null;
    }
  }

  function saveToken(value) {
    token = value === '' ? null : value;
    state.hasToken = token !== null;
    try {
      if (token === null) sessionStorage.removeItem(storageKey);
      else sessionStorage.setItem(storageKey, token);
    } catch {
      // Storage disabled: the token lives in memory only.
    }
  }

  // --- renewal: a renewable token (one with `ren`) is renewed in band before it expires,
  // so that the session goes on (README "Tokens"). When, is protocol.ts's renewalDelayMs
  // with the timing from the table; the page reads the claims it needs from the token's
  // payload (it cannot check the signature, and need not: the server decides).
  let renewTimer = null;

  function tokenClaims(value) {
    if (value === null) return null;
    try {
      const b64 = value.slice(0, value.indexOf('.')).replaceAll('-', '+').replaceAll('_', '/');
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null; // the admin token, or no viewer token at all
    }
  }

  function renewalDelay(claims, fresh) {
    const { iat, exp, ren } = claims ?? {};
    if (![iat, exp, ren].every(Number.isInteger) || ren <= exp) return null;
    const { lifetimeFraction, leadMs, minLifetimeFraction } = protocol.renewal;
    const lifetimeMs = Math.max(0, exp - iat) * 1000;
    const lead = Math.min(
      Math.max((1 - lifetimeFraction) * lifetimeMs, leadMs),
      (1 - minLifetimeFraction) * lifetimeMs,
    );
    const fromReceipt = lifetimeMs - lead;
    return fresh ? fromReceipt : Math.min(Math.max(0, exp * 1000 - lead - Date.now()), fromReceipt);
  }

  /** `fresh`: the token was just renewed, so its wait counts from now, not by this computer's clock. */
  function scheduleRenewal(fresh) {
    clearTimeout(renewTimer);
    renewTimer = null;
    const delay = renewalDelay(tokenClaims(token), fresh);
    if (delay === null) return;
    renewTimer = setTimeout(() => {
      renewTimer = null;
      send({ type: 'renew' });
    }, delay);
  }

  // --- terminal
  const term = new window.Terminal({
    cursorBlink: true,
    scrollback: 10_000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    theme: { background: '#000000', foreground: '#d8d8d8' },
  });
  const fitAddon = new window.FitAddon.FitAddon();
  term.loadAddon(fitAddon);
  term.open(ui.terminal);
  fitAddon.fit();
  term.focus();

  window.consoled = { term, state };

  const encoder = new TextEncoder();
  let socket = null;
  let reconnectTimer = null;
  let attempt = 0;
  let lastFrameAt = 0;
  let lastResize = '';
  let noticeTimer = null;
  let watchingHintShown = false;

  function setStatus(next, detail) {
    const prev = state.status;
    state.status = next;
    const labels = {
      connecting: 'connecting…',
      authenticating: 'authenticating…',
      connected: 'connected',
      reconnecting: `reconnecting${detail ? ` in ${detail}` : '…'}`,
      'need-token': 'token needed',
      closed: `closed${detail ? `: ${detail}` : ''}`,
    };
    ui.status.textContent = labels[next] ?? next;
    ui.status.dataset.state = next;
    if (prev !== next) console.debug(`consoled: ${prev} -> ${next}`);
    render();
  }

  function isWriter() {
    return state.writer !== null && state.viewerId !== null && state.writer.viewerId === state.viewerId;
  }

  function writerLabel(writer) {
    if (writer === null) return 'nobody';
    if (writer.viewerId === state.viewerId) return 'you';
    return writer.name ?? writer.viewerId;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  }

  function render() {
    const live = state.status === 'connected';
    ui.boot.textContent = `boot ${state.boot ?? '–'}`;
    const writer = isWriter();
    ui.mode.dataset.writer = String(writer);
    if (state.mode === null) ui.mode.textContent = '–';
    else if (writer) ui.mode.textContent = 'writer';
    else
      ui.mode.textContent = `watching (writer: ${writerLabel(state.writer)})${state.mode === 'ro' ? ' · read-only' : ''}`;
    ui.viewers.textContent =
      state.viewers === null ? '– viewers' : `${state.viewers} viewer${state.viewers === 1 ? '' : 's'}`;
    ui.skipped.textContent = `skipped ${formatBytes(state.skippedBytes)}`;
    ui.skipped.dataset.bytes = String(state.skippedBytes);
    ui.guestState.textContent = state.guestState === null ? '' : `guest ${state.guestState}`;
    ui.guestState.dataset.state = state.guestState ?? '';
    ui.takeLock.disabled = !live || state.mode !== 'rw' || writer;
    ui.release.disabled = !live || !writer;
    ui.reconnect.hidden = state.status !== 'closed';
  }

  function notice(text) {
    ui.notice.textContent = text;
    ui.notice.title = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      ui.notice.textContent = '';
    }, NOTICE_MS);
  }

  /** A line of our own in the terminal, dimmed; it is display only and never counted as log bytes. */
  function termNote(text) {
    term.write(`\r\n\x1b[2m[console] ${text}\x1b[0m\r\n`);
  }

  function send(message) {
    if (socket !== null && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  // --- connection
  function socketUrl() {
    const url = new URL(`/v1/guests/${encodeURIComponent(guest)}/console`, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.hash = '';
    url.search = '';
    if (state.offset !== null) url.searchParams.set('from', String(state.offset));
    if (wantMode !== null) url.searchParams.set('mode', wantMode);
    return url.href;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    ui.authForm.hidden = true;
    if (state.status !== 'reconnecting') setStatus('connecting');
    let requestedFrom = state.offset;
    // Bytes the server replays that this page already has (server older than `from`).
    let duplicateBytes = 0;
    let welcomed = false;
    const ws = new WebSocket(socketUrl());
    ws.binaryType = 'arraybuffer';
    socket = ws;

    ws.addEventListener('open', () => {
      if (ws !== socket) return;
      lastFrameAt = Date.now();
      // First frame: the token, or an anonymous auth that a server without auth accepts.
      ws.send(JSON.stringify(token === null ? { type: 'auth' } : { type: 'auth', token }));
      setStatus('authenticating');
    });

    ws.addEventListener('message', (event) => {
      if (ws !== socket) return;
      lastFrameAt = Date.now();
      if (typeof event.data !== 'string') {
        let bytes = new Uint8Array(event.data);
        // The protocol sends welcome first; bytes before it cannot be placed, so they are shown but not counted.
        if (welcomed && state.offset !== null) state.offset += bytes.length;
        if (duplicateBytes > 0) {
          const drop = Math.min(duplicateBytes, bytes.length);
          duplicateBytes -= drop;
          bytes = bytes.subarray(drop);
        }
        if (bytes.length > 0) term.write(bytes);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn('consoled: ignoring a text frame that is not JSON');
        return;
      }
      switch (msg.type) {
        case 'welcome': {
          // A second welcome on one connection: a proxying host followed the guest to
          // its new owner, resuming at the next byte this page lacks.
          if (welcomed) requestedFrom = state.offset;
          welcomed = true;
          attempt = 0;
          state.viewerId = msg.viewerId ?? null;
          state.mode = msg.mode ?? null;
          state.boot = msg.boot ?? null;
          state.writer = msg.writer ?? null;
          state.viewers = msg.viewers ?? null;
          state.canTakeover = msg.canTakeover === true;
          state.resizable = msg.resizable === true;
          if (typeof msg.guestState === 'string') state.guestState = msg.guestState;
          if (typeof msg.offset === 'number') {
            if (requestedFrom !== null && msg.offset > requestedFrom) {
              const missed = msg.offset - requestedFrom;
              state.skippedBytes += missed;
              termNote(`${formatBytes(missed)} of output are no longer held and were skipped`);
            } else if (requestedFrom !== null && msg.offset < requestedFrom) {
              duplicateBytes = requestedFrom - msg.offset;
            }
            state.offset = msg.offset;
          }
          lastResize = '';
          watchingHintShown = false;
          setStatus('connected');
          maybeSendResize();
          scheduleRenewal(false);
          break;
        }
        case 'lock': {
          const wasWriter = isWriter();
          if ((msg.writer?.viewerId ?? null) !== (state.writer?.viewerId ?? null)) watchingHintShown = false;
          state.writer = msg.writer ?? null;
          if (typeof msg.viewers === 'number') state.viewers = msg.viewers;
          if (wasWriter && !isWriter()) notice(`${writerLabel(state.writer)} took the writer lock`);
          if (!wasWriter && isWriter()) {
            lastResize = '';
            maybeSendResize();
          }
          render();
          break;
        }
        case 'skipped':
          state.skippedBytes += Number(msg.bytes) || 0;
          if (typeof msg.offset === 'number') state.offset = msg.offset;
          duplicateBytes = 0;
          notice(`fell behind: ${formatBytes(Number(msg.bytes) || 0)} skipped`);
          render();
          break;
        case 'boot':
          state.boot = msg.boot ?? state.boot;
          render();
          break;
        case 'moved':
          // Live-migrated. Through a proxying host the connection follows the guest
          // itself; else a close (GUEST_MOVED) follows and the reconnect resumes here.
          if (msg.proxied !== true && typeof msg.offset === 'number') state.offset = msg.offset;
          termNote(`the guest moved to host ${msg.host}`);
          break;
        case 'renumbered':
          if (state.offset !== null && typeof msg.from === 'number' && typeof msg.to === 'number')
            state.offset += msg.to - msg.from;
          break;
        case 'guest':
          state.guestState = msg.state ?? null;
          termNote(`guest ${msg.state}${msg.reason ? `: ${msg.reason}` : ''}`);
          render();
          break;
        case 'token':
          // The successor of the single-use token this connection spent, or a renewal:
          // the key to the next reconnect and to the log download.
          if (typeof msg.token !== 'string') break;
          saveToken(msg.token);
          state.tokenExpiresAt = typeof msg.expiresAt === 'string' ? msg.expiresAt : null;
          if (msg.renewed === true) state.renewals += 1;
          scheduleRenewal(msg.renewed === true);
          break;
        case 'error':
          notice(`${msg.code ?? 'ERROR'}: ${msg.message ?? ''}`);
          break;
        case 'pong':
          break;
        default:
          break; // Unknown types are ignored, so the server may add some.
      }
    });

    ws.addEventListener('close', (event) => {
      if (ws !== socket) return;
      socket = null;
      clearTimeout(renewTimer);
      renewTimer = null;
      onClosed(event, welcomed);
    });
  }

  /**
   * A close as protocol.ts's explainClose reads it: the reason first, which is the
   * error code (several errors share a close code: 4401 is UNAUTHORIZED and
   * TOKEN_INVALID), then the close code. `{code, text}`, or null for a normal close.
   */
  function explainClose(event) {
    if (errorCodePattern.test(event.reason))
      return { code: event.reason, text: protocol.errors[event.reason] ?? '' };
    if (protocol.normalCloseCodes.includes(event.code)) return null;
    const known = protocol.closeCodes[event.code];
    return known === undefined
      ? { code: `CLOSED_${event.code}`, text: event.reason }
      : { code: known.name, text: known.text };
  }

  function onClosed(event, welcomed) {
    const explained = explainClose(event);
    const code = explained === null ? null : explained.code;
    const text = explained === null ? '' : explained.text;
    state.lastError = code;
    state.viewers = null;
    if (code !== null && AUTH_CODES.has(code)) {
      saveToken(null);
      askForToken(
        code === 'UNAUTHORIZED'
          ? 'This console needs a viewer token.'
          : `The token was refused: ${code}.${text ? ` ${text}` : ''}`,
      );
      return;
    }
    if (code !== null && FINAL_CODES.has(code)) {
      setStatus('closed', code);
      termNote(`connection closed: ${code}${text ? ` (${text})` : ''}`);
      return;
    }
    if (welcomed) termNote(`connection lost${code ? ` (${code})` : ''}; reconnecting`);
    scheduleReconnect();
  }

  /** Capped exponential backoff with equal jitter: half fixed, half random (ioredis-style). */
  function scheduleReconnect() {
    const ceiling = Math.min(RECONNECT_CAP_MS, RECONNECT_BASE_MS * 2 ** attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    attempt += 1;
    setStatus('reconnecting', `${Math.ceil(delay / 1000)}s`);
    reconnectTimer = setTimeout(() => {
      state.reconnects += 1;
      connect();
    }, delay);
  }

  function askForToken(reason) {
    clearTimeout(reconnectTimer);
    setStatus('need-token');
    ui.authReason.textContent = reason;
    ui.authForm.hidden = false;
    ui.tokenInput.value = '';
    ui.tokenInput.focus();
  }

  ui.authForm.addEventListener('submit', (event) => {
    event.preventDefault();
    saveToken(ui.tokenInput.value.trim());
    ui.tokenInput.value = '';
    attempt = 0;
    connect();
    term.focus();
  });

  // Liveness: ping, and reconnect when nothing has arrived for too long.
  setInterval(() => {
    if (socket === null || socket.readyState !== WebSocket.OPEN || state.status !== 'connected') return;
    if (Date.now() - lastFrameAt > STALE_AFTER_MS) {
      socket.close(4000, 'stale');
      return;
    }
    send({ type: 'ping' });
  }, PING_INTERVAL_MS);

  // --- keystrokes: only the writer's reach the guest, so only the writer sends them.
  function sendKeys(bytes) {
    if (bytes.length === 0 || socket === null || socket.readyState !== WebSocket.OPEN) return;
    if (!isWriter()) {
      if (!watchingHintShown) {
        watchingHintShown = true;
        notice(
          state.mode === 'rw' ? 'watching: take the lock to type' : 'read-only: keystrokes are not sent',
        );
      }
      return;
    }
    for (let i = 0; i < bytes.length; i += MAX_KEYSTROKE_FRAME_BYTES) {
      socket.send(bytes.subarray(i, i + MAX_KEYSTROKE_FRAME_BYTES));
    }
  }

  // Only what the user typed (keys, paste, IME, mouse reports) goes to the guest. xterm.js
  // also answers queries in the output it renders (ESC[6n, ESC[c, DECRQSS, OSC 10 ?) and
  // reports focus when the output asked for it, through the same onData; sent on, those
  // answers would type into the guest with no key pressed, for output replayed at every
  // page load as much as for live output. The page cannot tell replayed bytes from live
  // ones, and an answer to output is a way for whoever prints into the console to make
  // the writer's page type: no answer is sent, live or replayed (README, "Browser page").
  // xterm.js marks user input with its core service's onUserInput, fired right before
  // onData for input that was typed and only for that; it is not public API, so when it
  // is missing the page fails closed (test/e2e/console-page-answers.test.ts notices).
  let typedPending = false;
  const coreService = term._core?.coreService;
  if (typeof coreService?.onUserInput === 'function') {
    coreService.onUserInput(() => {
      typedPending = true;
    });
  } else {
    state.keyboard = false;
    console.error('consoled: this xterm.js does not mark typed input; keystrokes are not sent');
  }
  term.onData((data) => {
    const typed = typedPending;
    typedPending = false;
    if (!typed) {
      state.answersDropped += data.length;
      return;
    }
    sendKeys(encoder.encode(data));
  });
  // onBinary carries mouse reports that are not UTF-8 text (one char per byte): only a
  // mouse action of the user's makes them.
  term.onBinary((data) => {
    if (state.keyboard) sendKeys(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
  });

  // --- size: the page always fits the window; the writer also resizes the guest's
  // terminal when the source supports it.
  function maybeSendResize() {
    if (!isWriter() || !state.resizable) return;
    const key = `${term.cols}x${term.rows}`;
    if (key === lastResize) return;
    lastResize = key;
    send({ type: 'resize', cols: term.cols, rows: term.rows });
  }

  term.onResize(() => maybeSendResize());
  let fitTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(fitTimer);
    fitTimer = setTimeout(() => fitAddon.fit(), 80);
  });

  // --- buttons
  ui.takeLock.addEventListener('click', () => {
    send({ type: state.writer === null ? 'acquire' : 'takeover' });
    term.focus();
  });

  ui.reconnect.addEventListener('click', () => {
    attempt = 0;
    state.reconnects += 1;
    connect();
    term.focus();
  });

  ui.release.addEventListener('click', () => {
    send({ type: 'release' });
    term.focus();
  });

  ui.download.addEventListener('click', async () => {
    ui.download.disabled = true;
    try {
      const url = new URL(`/console/${encodeURIComponent(guest)}/log`, location.href);
      url.search = '';
      url.hash = '';
      url.searchParams.set('boot', 'all');
      url.searchParams.set('start', '0');
      const headers = token === null ? {} : { Authorization: `Bearer ${token}` };
      const res = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
      if (!res.ok) {
        let code = `HTTP ${res.status}`;
        try {
          code = (await res.json()).error.code ?? code;
        } catch {
          // Not our JSON error body.
        }
        notice(`download failed: ${code}`);
        return;
      }
      const blob = await res.blob();
      const href = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = href;
      a.download = `${guest}-console.log`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60_000);
    } catch (err) {
      notice(`download failed: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      ui.download.disabled = false;
      term.focus();
    }
  });

  render();
  if (!state.keyboard) notice('this page cannot tell typing from terminal answers: keystrokes are not sent');
  connect();
})();
