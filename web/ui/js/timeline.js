// The archive timeline of the camera view: recorded ranges (gaps visible), protected ranges, the
// selection, now and the play head, on a canvas that zooms from 10 minutes to 30 days.
//
// Mouse/touch: click plays from that instant; drag selects a range; the wheel zooms around the
// pointer (shift+wheel pans). Keyboard (the canvas is focusable): ←/→ move the cursor (with
// shift: ten times as far), Enter plays from the cursor, +/- zoom, PageUp/PageDown pan, Home goes
// back to now, Esc clears the selection. Buttons above do the same for pointer-only users.

import { h, fmtDateTime, replace } from './util.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
export const SPANS = [
  ['10 min', 10 * MIN], ['1 h', HOUR], ['6 h', 6 * HOUR], ['24 h', DAY], ['7 d', 7 * DAY], ['30 d', 30 * DAY],
];
const MIN_SPAN = 10 * MIN;
const MAX_SPAN = 30 * DAY;
const TICKS = [
  1000, 5000, 10_000, 30_000, MIN, 5 * MIN, 10 * MIN, 30 * MIN, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY,
];
/** Share of the view kept right of now while following live. */
const FUTURE = 0.06;

const pad = (n) => String(n).padStart(2, '0');

/** 720 000 → "12 min", 43 200 000 → "12 h", 5 400 000 → "1.5 h", 172 800 000 → "2 d". */
function spanLabel(ms) {
  const [unit, size] = ms < HOUR ? ['min', MIN] : ms < DAY ? ['h', HOUR] : ['d', DAY];
  return `${+(ms / size).toFixed(1)} ${unit}`;
}

export class Timeline {
  /**
   * `onSeek(ms)`: play from an instant. `onSelect(startMs, endMs)` (null, null when cleared).
   * `onView(startMs, endMs)`: the visible window changed (fetch ranges for it).
   * `playhead()`: the wall-clock ms on screen, or null when live. `now()`: server clock.
   */
  constructor({ onSeek, onSelect, onView, playhead, now, span = DAY }) {
    Object.assign(this, { onSeek, onSelect, onView, playhead, now });
    this.span = span;
    this.follow = true;
    this.end = now() + span * FUTURE;
    this.ranges = [];
    this.protected = [];
    this.selection = null;
    this.cursor = null;
    this.hoverX = null;

    this.canvas = h('canvas', {
      class: 'timeline-canvas', tabindex: '0', role: 'slider', 'aria-label': 'Archive timeline',
      'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '100', 'data-testid': 'timeline',
    });
    this.spanSelect = h('select', { 'aria-label': 'Timeline span', onchange: (e) => this.setSpan(Number(e.target.value)) });
    this.spanOptions();
    const btn = (label, title, fn) => h('button', { type: 'button', class: 'btn btn-small', title, 'aria-label': title, onclick: fn }, label);
    this.el = h('div', { class: 'timeline' },
      h('div', { class: 'timeline-toolbar' },
        btn('◀', 'Earlier', () => this.pan(-0.5)),
        btn('−', 'Zoom out', () => this.zoom(2)),
        this.spanSelect,
        btn('+', 'Zoom in', () => this.zoom(0.5)),
        btn('▶', 'Later', () => this.pan(0.5)),
        btn('Now', 'Back to now', () => this.toNow()),
        h('span', { class: 'timeline-legend', 'aria-hidden': 'true' },
          h('span', { class: 'lg lg-rec' }), 'recorded ',
          h('span', { class: 'lg lg-prot' }), 'protected ',
          h('span', { class: 'lg lg-sel' }), 'selected')),
      this.canvas,
      h('p', { class: 'hint', title: 'Elsewhere on the page: Space pause, L live, M sound, S snapshot, F full screen' },
        'Click: play from there · drag: select · wheel: zoom · keys: ←/→ move, Enter play, +/− zoom'));

    this.bind();
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.canvas);
    this.tick = setInterval(() => this.advance(), 1000);
  }

  get start() {
    return this.end - this.span;
  }

  timeAt(x) {
    return this.start + (x / this.canvas.clientWidth) * this.span;
  }

  xAt(ms) {
    return ((ms - this.start) / this.span) * this.canvas.clientWidth;
  }

  setRanges(r) {
    this.ranges = r;
    this.draw();
  }

  setProtected(p) {
    this.protected = p;
    this.draw();
  }

  setSelection(sel) {
    this.selection = sel;
    this.draw();
  }

  setSpan(span) {
    const center = this.follow ? null : this.start + this.span / 2;
    this.span = Math.min(MAX_SPAN, Math.max(MIN_SPAN, span));
    if (center === null) this.end = this.now() + this.span * FUTURE;
    else this.end = center + this.span / 2;
    this.changed();
  }

  /** Zooms by `factor` around `atMs` (the view's centre by default). */
  zoom(factor, atMs) {
    const span = Math.min(MAX_SPAN, Math.max(MIN_SPAN, this.span * factor));
    if (span === this.span) return;
    if (this.follow && atMs === undefined) {
      // Following now stays following now. (Zooming around now and clamping would not: the
      // clock moves between the two reads, the end falls a millisecond short of the latest and
      // the view would stop following and drift into the past at the next zoom.)
      this.span = span;
      this.end = this.now() + span * FUTURE;
      this.changed();
      return;
    }
    const at = atMs ?? this.start + this.span / 2;
    const frac = (at - this.start) / this.span;
    this.span = span;
    this.end = at + (1 - frac) * span;
    this.clampEnd();
    this.changed();
  }

  pan(fraction) {
    this.end += this.span * fraction;
    this.follow = false;
    this.clampEnd();
    this.changed();
  }

  toNow() {
    this.follow = true;
    this.end = this.now() + this.span * FUTURE;
    this.changed();
  }

  clampEnd() {
    const latest = this.now() + this.span * FUTURE;
    if (this.end >= latest) {
      this.end = latest;
      this.follow = true;
    } else {
      this.follow = false;
    }
  }

  /**
   * The span control's choices: the presets, and the current span among them when zooming (the
   * buttons, the wheel, the keys) led to one that is not a preset, so the control never names a
   * span other than the one shown.
   */
  spanOptions() {
    if (this.optionsSpan === this.span) return;
    this.optionsSpan = this.span;
    const spans = SPANS.some(([, ms]) => ms === this.span) ? SPANS : [...SPANS, [spanLabel(this.span), this.span]].sort((a, b) => a[1] - b[1]);
    replace(this.spanSelect, spans.map(([label, ms]) => h('option', { value: String(ms), selected: ms === this.span }, label)));
  }

  changed() {
    this.spanOptions();
    this.draw();
    this.onView(this.start, this.end);
  }

  /** Once a second: keep now in view while following, redraw the play head. */
  advance() {
    // Never move the view under the user's pointer (a click must land where it points).
    if (this.follow && this.hoverX === null && !this.dragging) {
      const latest = this.now() + this.span * FUTURE;
      // Move in steps (a fifth of the margin) so a click lands where the pointer was.
      if (latest - this.end > this.span * FUTURE * 0.2) {
        this.end = latest;
        this.onView(this.start, this.end);
      }
    }
    this.draw();
  }

  bind() {
    const c = this.canvas;
    let down = null;
    c.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      c.setPointerCapture(e.pointerId);
      down = { x: e.offsetX, dragging: false };
      this.dragging = true;
    });
    c.addEventListener('pointermove', (e) => {
      this.hoverX = e.offsetX;
      if (down && (down.dragging || Math.abs(e.offsetX - down.x) > 4)) {
        down.dragging = true;
        const a = this.timeAt(down.x);
        const b = this.timeAt(e.offsetX);
        this.selection = [Math.min(a, b), Math.max(a, b)];
      }
      this.draw();
    });
    c.addEventListener('pointerleave', () => {
      this.hoverX = null;
      this.draw();
    });
    c.addEventListener('pointerup', (e) => {
      if (!down) return;
      const d = down;
      down = null;
      this.dragging = false;
      if (d.dragging) {
        const a = this.timeAt(d.x);
        const b = this.timeAt(e.offsetX);
        this.selection = [Math.min(a, b), Math.max(a, b)];
        this.onSelect(this.selection[0], this.selection[1]);
      } else {
        const t = this.timeAt(e.offsetX);
        c.dataset.clickedMs = String(Math.round(t));
        this.cursor = t;
        this.onSeek(t);
      }
      this.draw();
    });
    c.addEventListener('wheel', (e) => {
      e.preventDefault();
      if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        this.pan((e.deltaX || e.deltaY) > 0 ? 0.1 : -0.1);
      } else {
        this.zoom(e.deltaY > 0 ? 1.25 : 0.8, this.timeAt(e.offsetX));
      }
    }, { passive: false });
    c.addEventListener('keydown', (e) => {
      const step = this.span / (e.shiftKey ? 10 : 100);
      const cur = this.cursor ?? (this.playhead() || this.now());
      let handled = true;
      switch (e.key) {
        case 'ArrowLeft': this.moveCursor(cur - step); break;
        case 'ArrowRight': this.moveCursor(cur + step); break;
        case 'Enter': case ' ': this.onSeek(cur); break;
        case '+': case '=': this.zoom(0.5, cur); break;
        case '-': case '_': this.zoom(2, cur); break;
        case 'PageUp': this.pan(-0.5); break;
        case 'PageDown': this.pan(0.5); break;
        case 'Home': this.cursor = null; this.toNow(); break;
        case 'Escape': this.selection = null; this.onSelect(null, null); this.draw(); break;
        default: handled = false;
      }
      if (handled) e.preventDefault();
    });
  }

  moveCursor(t) {
    this.cursor = Math.min(t, this.now());
    if (this.cursor < this.start || this.cursor > this.end) {
      this.end = this.cursor + this.span / 2;
      this.clampEnd();
      this.onView(this.start, this.end);
    }
    this.canvas.setAttribute('aria-valuetext', fmtDateTime(this.cursor));
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    c.dataset.startMs = String(Math.round(this.start));
    c.dataset.endMs = String(Math.round(this.end));
    // For assistive technology: where the cursor (or the play head, or now) is in the view.
    const at = this.cursor ?? this.playhead() ?? this.now();
    c.setAttribute('aria-valuenow', String(Math.round(Math.min(100, Math.max(0, ((at - this.start) / this.span) * 100)))));
    c.setAttribute('aria-valuetext', fmtDateTime(at));
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const css = getComputedStyle(c);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    g.fillStyle = color('--tl-bg', '#15191f');
    g.fillRect(0, 0, w, hgt);

    const axisH = 18;
    const bandTop = 6;
    const bandH = hgt - axisH - bandTop - 4;
    const now = this.now();

    // The future, hatched.
    const xNow = this.xAt(now);
    if (xNow < w) {
      g.fillStyle = color('--tl-future', '#1d222a');
      g.fillRect(Math.max(0, xNow), 0, w - Math.max(0, xNow), hgt - axisH);
    }

    // Recorded ranges.
    g.fillStyle = color('--tl-rec', '#3b82f6');
    for (const r of this.ranges) {
      const x0 = Math.max(0, this.xAt(r.startMs));
      const x1 = Math.min(w, this.xAt(r.endMs));
      if (x1 >= 0 && x0 <= w) g.fillRect(x0, bandTop + 8, Math.max(1, x1 - x0), bandH - 8);
    }
    // Protected ranges: a strip on top.
    g.fillStyle = color('--tl-prot', '#f59e0b');
    for (const p of this.protected) {
      const x0 = Math.max(0, this.xAt(p.startMs));
      const x1 = Math.min(w, this.xAt(p.endMs));
      if (x1 >= 0 && x0 <= w) g.fillRect(x0, bandTop, Math.max(2, x1 - x0), 6);
    }
    // Selection.
    if (this.selection) {
      const x0 = this.xAt(this.selection[0]);
      const x1 = this.xAt(this.selection[1]);
      g.fillStyle = color('--tl-sel', 'rgba(250,250,250,0.18)');
      g.fillRect(x0, 0, Math.max(1, x1 - x0), hgt - axisH);
      g.strokeStyle = color('--tl-sel-edge', '#e5e7eb');
      g.lineWidth = 1;
      g.strokeRect(x0 + 0.5, 0.5, Math.max(1, x1 - x0 - 1), hgt - axisH - 1);
    }

    // Axis: ticks and labels.
    const minStep = (this.span / w) * 70;
    const step = TICKS.find((t) => t >= minStep) || TICKS[TICKS.length - 1];
    const offset = new Date().getTimezoneOffset() * MIN;
    let t = Math.ceil((this.start - offset) / step) * step + offset;
    if (step >= DAY) t = startOfLocalDay(t);
    g.font = '11px system-ui, sans-serif';
    g.textBaseline = 'top';
    g.fillStyle = color('--tl-axis', '#9ca3af');
    g.strokeStyle = color('--tl-grid', '#2a313b');
    for (; t <= this.end; t = step >= DAY ? startOfLocalDay(t + step + HOUR) : t + step) {
      const x = Math.round(this.xAt(t)) + 0.5;
      g.beginPath();
      g.moveTo(x, 0);
      g.lineTo(x, hgt - axisH + 4);
      g.stroke();
      const label = tickLabel(t, step);
      if (x + 3 + g.measureText(label).width <= w) g.fillText(label, x + 3, hgt - axisH + 3);
    }

    // Now (red) and the play head (white).
    if (xNow >= 0 && xNow <= w) line(g, xNow, hgt - axisH, color('--tl-now', '#ef4444'), 2);
    const ph = this.playhead();
    if (ph !== null && ph !== undefined) {
      const x = this.xAt(ph);
      if (x >= 0 && x <= w) {
        line(g, x, hgt - axisH, color('--tl-head', '#ffffff'), 2);
        g.fillStyle = color('--tl-head', '#ffffff');
        g.beginPath();
        g.moveTo(x - 5, 0);
        g.lineTo(x + 5, 0);
        g.lineTo(x, 7);
        g.fill();
      }
    }
    if (this.cursor !== null && document.activeElement === c) {
      g.setLineDash([3, 3]);
      line(g, this.xAt(this.cursor), hgt - axisH, color('--tl-axis', '#9ca3af'), 1);
      g.setLineDash([]);
    }
    // Hover: the time under the pointer.
    if (this.hoverX !== null) {
      const label = fmtDateTime(this.timeAt(this.hoverX));
      const tw = g.measureText(label).width + 8;
      const x = Math.min(Math.max(0, this.hoverX - tw / 2), w - tw);
      g.fillStyle = 'rgba(0,0,0,0.75)';
      g.fillRect(x, bandTop + 10, tw, 16);
      g.fillStyle = '#fff';
      g.fillText(label, x + 4, bandTop + 12);
      line(g, this.hoverX, hgt - axisH, 'rgba(255,255,255,0.35)', 1);
    }
  }

  destroy() {
    clearInterval(this.tick);
    this.resize.disconnect();
  }
}

function line(g, x, height, style, width) {
  g.strokeStyle = style;
  g.lineWidth = width;
  g.beginPath();
  g.moveTo(Math.round(x) + 0.5, 0);
  g.lineTo(Math.round(x) + 0.5, height);
  g.stroke();
}

function startOfLocalDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function tickLabel(ms, step) {
  const d = new Date(ms);
  if (step >= DAY) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (step < MIN) return `${hm}:${pad(d.getSeconds())}`;
  if (d.getHours() === 0 && d.getMinutes() === 0) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return hm;
}
