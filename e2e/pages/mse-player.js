// Shared MSE-over-WebSocket player used by mse.html (live) and archive.html (archive playback).
//
// It consumes the Go original's wire protocol (reference go-original.md §3.1-3.4):
//   binary 0x09 + ASCII codec list -> addSourceBuffer('video/mp4; codecs="<list>"'), mode 'segments'
//   binary init segment (ftyp+moov), then binary moof+mdat fragments -> appendBuffer via a FIFO
//   drained on 'updateend'.
// Like the original clients it never inspects the fMP4 bytes; anything binary that is not the codec
// message is appended as is. A later 0x09 message (codec change / upstream restart) tears the
// MediaSource down and starts a fresh one with the new codec list.
//
// Everything observable is written into window.__stats so that e2e/run.mjs can read it.
(function () {
  'use strict';

  const MAX_ERRORS = 50;
  const MAX_TEXTS = 20;
  // Live playback keeps this many seconds behind currentTime; older media is removed so a long
  // session cannot hit the SourceBuffer quota (the original clients never remove anything).
  const KEEP_BEHIND_S = 30;

  function now() {
    return Math.round(performance.now());
  }

  function rangesOf(tr) {
    const out = [];
    if (!tr) return out;
    for (let i = 0; i < tr.length; i++) {
      out.push([+tr.start(i).toFixed(3), +tr.end(i).toFixed(3)]);
    }
    return out;
  }

  /**
   * @param {object} opts
   * @param {HTMLVideoElement} opts.video
   * @param {string} opts.url          ws:// URL to open
   * @param {object} opts.stats        object exposed as window.__stats (extended here)
   * @param {(text: string) => void} [opts.onText]  text-frame handler (archive flow control)
   * @param {() => void} [opts.onTick]             called every second
   * @param {() => void} [opts.onClose]            called when the socket closes
   * @param {boolean} [opts.closeIsError]          record a socket close as an error (live)
   */
  function createPlayer(opts) {
    const video = opts.video;
    const stats = opts.stats;
    Object.assign(stats, {
      url: opts.url,
      wsState: 'connecting',
      messages: 0,
      binaryMessages: 0,
      textMessages: 0,
      bytes: 0,
      ignoredBeforeCodecs: 0,
      codecs: null,
      codecMessages: 0,
      resets: 0,
      appended: 0,
      appendedBytes: 0,
      queued: 0,
      removed: 0,
      seeks: 0,
      playCalls: 0,
      endOfStream: false,
      close: null,
      texts: [],
      buffered: [],
      errors: [],
      fatal: null,
    });

    function error(what, detail) {
      const e = { t: now(), what: String(what) };
      if (detail !== undefined) e.detail = String(detail);
      if (stats.errors.length < MAX_ERRORS) stats.errors.push(e);
      console.error('[player]', e.what, e.detail || '');
    }
    function fatal(what, detail) {
      error(what, detail);
      if (!stats.fatal) stats.fatal = what + (detail !== undefined ? ': ' + detail : '');
    }

    // --- MediaSource state; replaced wholesale on a codec change -------------------------------
    let gen = 0;            // generation: bumped by every 0x09 message
    let ms = null;          // current MediaSource
    let sb = null;          // its SourceBuffer (null until 'sourceopen')
    let objectUrl = null;
    let queue = [];         // FIFO of ArrayBuffers waiting for appendBuffer
    let eosWanted = false;  // drain the queue, then endOfStream()

    function teardown() {
      queue = [];
      if (sb) {
        sb.removeEventListener('updateend', pump);
        sb.removeEventListener('error', onSbError);
      }
      if (ms && ms.readyState === 'open') {
        try {
          if (sb && !sb.updating) ms.removeSourceBuffer(sb);
        } catch (e) { /* the media element is being reset anyway */ }
      }
      sb = null;
      ms = null;
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = null;
    }

    function onSbError() {
      error('sourcebuffer error event');
    }

    function setup(codecs) {
      const myGen = ++gen;
      const mime = 'video/mp4; codecs="' + codecs + '"';
      stats.mime = mime;
      stats.typeSupported = MediaSource.isTypeSupported(mime);
      if (!stats.typeSupported) {
        // addSourceBuffer will throw too; keep going so that the exact exception is recorded.
        error('MediaSource.isTypeSupported=false', mime);
      }
      ms = new MediaSource();
      const thisMs = ms;
      objectUrl = URL.createObjectURL(ms);
      thisMs.addEventListener('sourceopen', function () {
        if (myGen !== gen) return; // a newer codec message arrived meanwhile
        try {
          sb = thisMs.addSourceBuffer(mime);
          sb.mode = 'segments';
        } catch (e) {
          fatal('addSourceBuffer failed', mime + ' ' + e);
          return;
        }
        sb.addEventListener('updateend', pump);
        sb.addEventListener('error', onSbError);
        pump();
      }, { once: true });
      video.src = objectUrl;
      // autoplay is set on the element, but a fresh src needs a play() once data is there: see tick().
    }

    function onCodecs(codecs) {
      stats.codecMessages++;
      if (stats.codecs === null) {
        stats.codecs = codecs;
        setup(codecs);
        return;
      }
      // A second codec message: the stream was restarted (maybe with other codecs). The queued data
      // belongs to the old stream, so drop it and start a new MediaSource for what follows.
      stats.resets++;
      if (codecs !== stats.codecs) stats.codecChanges = (stats.codecChanges || 0) + 1;
      stats.previousCodecs = stats.codecs;
      stats.codecs = codecs;
      teardown();
      setup(codecs);
    }

    function bufferedAhead() {
      if (!sb) return 0;
      const b = video.buffered;
      const t = video.currentTime;
      for (let i = 0; i < b.length; i++) {
        if (b.end(i) > t && b.start(i) <= t + 0.1) return b.end(i) - t;
      }
      // Nothing under the play head: count from the first range (we are about to seek there).
      if (b.length > 0 && t < b.start(0)) return b.end(0) - b.start(0);
      return 0;
    }

    /** Make room after QuotaExceededError: drop everything more than a few seconds behind. */
    function evict(minBehind) {
      if (!sb || sb.updating || video.buffered.length === 0) return false;
      const start = video.buffered.start(0);
      const end = video.currentTime - minBehind;
      if (end - start < 1) return false;
      try {
        sb.remove(start, end);
        stats.removed++;
        return true;
      } catch (e) {
        error('SourceBuffer.remove failed', e);
        return false;
      }
    }

    function pump() {
      if (!sb || sb.updating) return;
      if (queue.length > 0) {
        const buf = queue[0];
        try {
          sb.appendBuffer(buf);
          queue.shift();
          stats.appended++;
          stats.appendedBytes += buf.byteLength;
        } catch (e) {
          if (e && e.name === 'QuotaExceededError') {
            // Keep the buffer at the head of the queue; retry after the removal's updateend (or
            // from tick() when nothing could be removed yet).
            if (!stats.quotaExceeded) error('QuotaExceededError, evicting old media');
            stats.quotaExceeded = (stats.quotaExceeded || 0) + 1;
            evict(5);
          } else {
            fatal('appendBuffer failed', e);
            queue = [];
          }
        }
        stats.queued = queue.length;
        return;
      }
      stats.queued = 0;
      if (eosWanted && ms && ms.readyState === 'open' && !stats.endOfStream) {
        try {
          ms.endOfStream();
          stats.endOfStream = true;
        } catch (e) {
          error('endOfStream failed', e);
        }
      }
    }

    function enqueue(buf) {
      queue.push(buf);
      stats.queued = queue.length;
      pump();
    }

    // --- the socket ----------------------------------------------------------------------------
    let ws;
    try {
      ws = new WebSocket(opts.url);
    } catch (e) {
      fatal('WebSocket constructor failed', e);
      return { stats };
    }
    ws.binaryType = 'arraybuffer';
    ws.onopen = function () {
      stats.wsState = 'open';
      stats.openedAt = now();
    };
    ws.onerror = function () {
      // The event carries no detail; the close event that follows has the code.
      error('websocket error event');
    };
    ws.onclose = function (ev) {
      stats.wsState = 'closed';
      stats.close = { t: now(), code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
      if (stats.codecs === null) {
        fatal('websocket closed before the codec message', 'code=' + ev.code + ' reason=' + ev.reason);
      } else if (opts.closeIsError) {
        error('websocket closed', 'code=' + ev.code + ' reason=' + ev.reason);
      }
      if (opts.onClose) opts.onClose(ev);
    };
    ws.onmessage = function (ev) {
      stats.messages++;
      if (typeof ev.data === 'string') {
        stats.textMessages++;
        if (stats.texts.length < MAX_TEXTS) stats.texts.push(ev.data.slice(0, 200));
        if (opts.onText) opts.onText(ev.data);
        return;
      }
      const buf = ev.data;
      stats.binaryMessages++;
      stats.bytes += buf.byteLength;
      const u8 = new Uint8Array(buf);
      if (u8.length > 0 && u8[0] === 9) {
        onCodecs(new TextDecoder().decode(u8.subarray(1)));
        return;
      }
      if (stats.codecs === null) {
        // The newer original client ignores data before the codec message.
        stats.ignoredBeforeCodecs++;
        return;
      }
      enqueue(buf);
    };

    video.addEventListener('error', function () {
      const e = video.error;
      // A media error after a reset of src is about the old source only if src is empty.
      fatal('video element error', e ? 'code=' + e.code + ' ' + (e.message || '') : 'unknown');
    });
    video.addEventListener('playing', function () {
      if (!stats.firstPlayingAt) stats.firstPlayingAt = now();
    });

    // --- once a second (and after appends): seek to the buffer start, play, trim ----------------
    function tick() {
      const b = video.buffered;
      stats.buffered = rangesOf(b);
      stats.currentTime = video.currentTime;
      if (sb && b.length > 0) {
        // Live: the server may not start at time 0. Jump to the first buffered frame if behind it.
        if (video.currentTime < b.start(0)) {
          video.currentTime = b.start(0);
          stats.seeks++;
        }
        if (video.paused && !video.ended && bufferedAhead() > 0.3) {
          stats.playCalls++;
          const p = video.play();
          if (p && p.catch) p.catch(function (e) { error('play() rejected', e); });
        }
        if (opts.trim && !sb.updating && queue.length === 0 &&
            video.currentTime - b.start(0) > KEEP_BEHIND_S * 2) {
          evict(KEEP_BEHIND_S);
        }
      }
      if (stats.quotaExceeded && sb && !sb.updating) pump();
      if (opts.onTick) opts.onTick();
    }
    setInterval(tick, 1000);
    // Also react quickly to the first data instead of waiting up to a second.
    video.addEventListener('loadeddata', tick);
    video.addEventListener('progress', function () {
      if (video.paused && !stats.playCalls) tick();
    });

    return {
      stats: stats,
      video: video,
      send: function (text) {
        if (ws.readyState === WebSocket.OPEN) {
          ws.send(text);
          return true;
        }
        return false;
      },
      /** Ask for endOfStream() once everything received so far is appended. */
      finish: function () {
        eosWanted = true;
        pump();
      },
      /** True when nothing is waiting to be appended (buffered reflects all received data). */
      idle: function () {
        return !!sb && !sb.updating && queue.length === 0;
      },
      bufferedAhead: bufferedAhead,
      close: function () {
        ws.close();
      },
    };
  }

  window.createMsePlayer = createPlayer;
})();
