// sse.js: the page's one EventSource (the node caps event streams), on the selected node's
// /v1/events. Every event is published as ('event', obj); the stream's state as
// ('sse', 'connecting' | 'live' | 'reconnecting' | 'closed').

import { url } from './api.js';
import { emit } from './store.js';

let es = null;
let base = null;
let retry = 0;
let backoff = 2000;

export function connect(b) {
  if (es && b === base) return;
  close();
  base = b;
  open();
}

function open() {
  clearTimeout(retry);
  emit('sse', 'connecting');
  es = new EventSource(url(base, '/v1/events'));
  es.onopen = () => {
    backoff = 2000;
    emit('sse', 'live');
  };
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch { return; }
    if (ev && typeof ev === 'object') emit('event', ev);
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (e.g. too many streams open) or gone: try again, more slowly each time.
      emit('sse', 'closed');
      es.close();
      es = null;
      retry = setTimeout(open, backoff);
      backoff = Math.min(backoff * 2, 30000);
    } else emit('sse', 'reconnecting');
  };
}

function close() {
  clearTimeout(retry);
  if (es) es.close();
  es = null;
}
