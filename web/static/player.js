/* relay player: plays a relay viewer WebSocket (fragmented MP4) in a <video> with Media Source Extensions.
 *
 * Classic script, no build step, no dependencies: it defines `window.RelayPlayer`.
 *
 *   const player = new RelayPlayer(video, "wss://host/ws/watch/demo", {targetLatency: 1});
 *   player.stats()   // {latency, buffered, decoded, dropped, reconnects, state, codec, width, height, bitrate, ...}
 *
 * The protocol (server -> browser): text {"type":"init","mime":...} then one binary init segment; binary
 * messages of whole fragments (the first after an init starts with a keyframe); text {"type":"waiting"},
 * {"type":"end"}; anything else is ignored. Browser -> server: {"type":"stats", ...} every 2 s.
 *
 * Design, in short:
 * - Every init segment gets a fresh MediaSource. Rebuilding is slower than changeType() by a few
 *   frames, but it is the one path that works for any change (codec, timescale, timestamps restarting).
 * - Appends go through one queue driven by `updateend`, never while the SourceBuffer is updating.
 * - The live edge is the end of the buffered range the newest data went into (not simply the last range:
 *   a bot that restarts its encoder without a new init restarts its timestamps at 0).
 * - Latency (live edge - currentTime) is steered by playbackRate; see `control()` for the constants.
 * - Anything that goes wrong (socket closed, media error, stall, full buffer) ends in the same place:
 *   release the MediaSource, reconnect with backoff, start again at the live edge.
 */
(function () {
  "use strict";

  const DEFAULTS = {
    targetLatency: 1.0, // s between the live edge and what is shown
    maxLatency: 3.0, // s; beyond this we seek instead of speeding up
    backBuffer: 10, // s kept behind currentTime
    statsOverlay: null, // element the stats overlay is drawn into (toggled by toggleStats())
    muted: false, // start muted (wall tiles)
    unmuteButton: true, // show an "Unmute" button when autoplay forces mute
    ui: true, // draw state messages / buttons over the video (its parent must be position:relative)
  };

  // -- latency controller (see control()) ----------------------------------------------------------
  const TICK_MS = 250; // controller and watchdog period
  const SAFETY = 0.3; // s of buffer ahead we always want; we never speed up into less than this
  const GAIN = 0.5; // playbackRate added per second of excess latency (time constant ~2 s)
  const MAX_RATE = 1.5;
  const SLOW_RATE = 0.95; // used only while the buffer trough is near empty (micro-stalls otherwise)
  const PREROLL_MAX = 3; // s a fresh start may wait for the target's worth of buffer before playing
  const DEADBAND_ON = 0.2; // s above target before we start speeding up ...
  const DEADBAND_OFF = 0.05; // ... and where we stop (hysteresis: no rate flapping)
  // -- watchdogs ---------------------------------------------------------------------------------------
  const STALL_FLAG = 1.2; // s without progress -> state "stalled"
  const STALL_REBUILD = 3.0; // s without progress while data arrives -> rebuild
  const NO_PICTURE_REBUILD = 6.0; // s of fragments arriving without anything becoming playable -> rebuild
  const SILENCE_RECONNECT = 20; // s without any message (not "waiting") -> assume a dead socket
  const HEALTHY_AFTER = 5; // s of playing after which the backoff resets
  const HIDDEN_RELEASE_MS = 5000; // a hidden tab keeps its socket this long
  const BACKOFF_MIN = 0.5, BACKOFF_MAX = 10; // s
  const MAX_QUEUE_BYTES = 64 << 20; // pending appends beyond this mean the SourceBuffer is stuck
  const STATS_MS = 2000; // stats message to the server
  const BITRATE_WINDOW = 5; // s of received bytes the bitrate is averaged over

  const now = () => performance.now() / 1000;

  const CODEC_NAMES = [
    [/^(avc1|avc3)/, "H.264", "video"], [/^(hvc1|hev1)/, "HEVC", "video"], [/^(vp09|vp9)/, "VP9", "video"],
    [/^(vp08|vp8)/, "VP8", "video"], [/^av01/, "AV1", "video"], [/^mp4a\.(69|6b)/i, "MP3", "audio"],
    [/^mp4a/, "AAC", "audio"], [/^opus/i, "Opus", "audio"], [/^flac/i, "FLAC", "audio"],
    [/^ac-3/, "AC-3", "audio"], [/^ec-3/, "E-AC-3", "audio"],
  ];

  /** "avc1.42C01F" -> {name: "H.264", kind: "video"}. */
  function codecInfo(codec) {
    for (const [re, name, kind] of CODEC_NAMES) if (re.test(codec)) return { name, kind };
    return { name: codec.split(".")[0], kind: "" };
  }

  /** 'video/mp4; codecs="avc1.42C01F,mp4a.40.2"' -> ["avc1.42C01F", "mp4a.40.2"]. */
  function parseCodecs(mime) {
    const m = /codecs\s*=\s*"?([^";]*)"?/i.exec(mime || "");
    return m ? m[1].split(",").map((c) => c.trim()).filter(Boolean) : [];
  }

  /** MediaSource where it exists, ManagedMediaSource where only that does (iOS Safari 17.1+). */
  function mediaSourceClass() {
    if (window.MediaSource) return window.MediaSource;
    if (window.ManagedMediaSource) return window.ManagedMediaSource;
    return null;
  }

  /** A specific reason why `mime` is not playable: which codec, and what it is. */
  function unsupportedText(MS, mime, tracks) {
    const container = (mime || "").split(";")[0].trim() || "video/mp4";
    const bad = parseCodecs(mime).filter((c) => !MS.isTypeSupported(`${container}; codecs="${c}"`));
    if (!bad.length) return `This browser cannot play ${mime}`;
    const parts = bad.map((c) => {
      const info = codecInfo(c);
      const track = (tracks || []).find((t) => t.codec === c);
      return `${c} (${info.name}) ${(track && track.kind) || info.kind}`.trim();
    });
    return `This browser cannot play ${parts.join(" or ")}`;
  }

  /** TimeRanges -> [{start, end}] (reading it throws once the MediaSource is gone). */
  function rangesOf(timeRanges) {
    const out = [];
    try {
      for (let i = 0; i < timeRanges.length; i++) out.push({ start: timeRanges.start(i), end: timeRanges.end(i) });
    } catch (e) { /* detached SourceBuffer: no ranges */ }
    return out;
  }

  /** The range that is new or changed in `after` (where the last append landed), latest first. */
  function grownRange(before, after) {
    const same = (a, b) => Math.abs(a.start - b.start) < 1e-3 && Math.abs(a.end - b.end) < 1e-3;
    for (let i = after.length - 1; i >= 0; i--) if (!before.some((b) => same(b, after[i]))) return after[i];
    return null;
  }

  const CLOSE_TEXT = { 1000: "closed", 1001: "server going away", 1006: "connection lost", 1008: "refused",
    1011: "server error", 1012: "server restarting", 1013: "server busy" };

  const SPEAKER_OFF = '<svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true"><path fill="currentColor" ' +
    'd="M3 9v6h4l5 5V4L7 9H3zm13.6 3 2.7-2.7-1.4-1.4-2.7 2.7-2.7-2.7-1.4 1.4 2.7 2.7-2.7 2.7 1.4 1.4 2.7-2.7 ' +
    '2.7 2.7 1.4-1.4-2.7-2.7z"/></svg>';
  const PLAY = '<svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true"><path fill="currentColor" ' +
    'd="M8 5v14l11-7z"/></svg>';

  class RelayPlayer {
    constructor(video, url, options) {
      this.video = video;
      this.url = url;
      this.opts = Object.assign({}, DEFAULTS, options || {});
      this.state = "";
      this.message = "";
      this.ws = null;
      this.ms = null; // MediaSource of the current init segment
      this.sb = null;
      this.gen = 0; // bumped on every teardown: callbacks of an older MediaSource ignore themselves
      this.queue = []; // ArrayBuffers waiting for the SourceBuffer (the init segment first)
      this.queueBytes = 0;
      this.op = null; // "append" | "remove" while the SourceBuffer is updating because of us
      this.pendingRemove = null; // [start, end] to remove before the next append
      this.quotaStrikes = 0;
      this.initMsg = null; // the latest init message (mime, tracks, meta)
      this.expectInit = false; // the next binary message is the init segment
      this.unsupported = false;
      this.ended = false; // the server said the stream ended: do not reconnect
      this.serverWaiting = false; // the server said the stream is not live (yet)
      this.stopped = false;
      this.suspended = false; // released because the tab was hidden
      this.attempt = 0; // consecutive failed connections, for the backoff
      this.reconnects = 0;
      this.retryTimer = null;
      this.hiddenTimer = null;
      this.statsTimer = null;
      this.resetMedia();
      this.bytesLog = []; // [time, bytes] of binary messages, for the bitrate
      this.lastMessageAt = now();
      this.lastBinaryAt = 0;
      this.connectedAt = 0;
      this.buildUi();
      this.listen();
      this.tickTimer = setInterval(() => this.tick(), TICK_MS);
      this.connect();
    }

    // -- public --------------------------------------------------------------------------------------
    /** Numbers for the overlay, the page and automated tests. */
    stats() {
      const v = this.video;
      const q = this.playbackQuality();
      const track = this.videoTrack();
      const ahead = this.aheadOf(v.currentTime);
      return {
        latency: round(this.latencyAvg(), 3), // mean over the controller window (fragments make it a sawtooth)
        latencyNow: round(this.latencyNow(), 3),
        buffered: round(ahead, 3),
        targetLatency: round(this.effectiveTarget(), 3),
        playbackRate: v.playbackRate,
        decoded: q.decoded,
        dropped: q.dropped,
        reconnects: this.reconnects,
        state: this.state,
        codec: this.initMsg ? parseCodecs(this.initMsg.mime).join(",") : "",
        mime: this.initMsg ? this.initMsg.mime : "",
        width: v.videoWidth || (track && track.width) || 0,
        height: v.videoHeight || (track && track.height) || 0,
        bitrate: Math.round(this.bitrate()),
        fragmentDuration: round(this.chunkDuration, 3),
        currentTime: round(v.currentTime, 3),
        muted: v.muted,
      };
    }

    toggleStats(force) {
      const el = this.opts.statsOverlay;
      if (!el) return;
      el.hidden = force === undefined ? !el.hidden : !force;
      this.renderStats();
    }

    /** Start over (e.g. after "ended", when the page sees the stream live again). */
    restart() {
      this.stopped = false;
      this.ended = false;
      this.unsupported = false;
      this.attempt = 0;
      this.releaseMedia();
      this.connect();
    }

    destroy() {
      this.stopped = true;
      clearInterval(this.tickTimer);
      clearTimeout(this.retryTimer);
      clearTimeout(this.hiddenTimer);
      this.closeSocket();
      this.releaseMedia();
      for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
      for (const el of this.uiElements) el.remove();
    }

    // -- the socket ----------------------------------------------------------------------------------
    connect() {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      if (this.stopped || this.suspended) return;
      this.closeSocket();
      this.ended = false;
      this.serverWaiting = false;
      this.expectInit = false;
      this.setState("connecting", this.reconnects ? "Reconnecting…" : "Connecting…");
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) { // a malformed URL: nothing to retry
        this.setState("error", `Cannot connect: ${e.message}`);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.connectedAt = now();
      this.lastMessageAt = now();
      ws.onmessage = (ev) => { if (ws === this.ws) this.onMessage(ev.data); };
      ws.onclose = (ev) => { if (ws === this.ws) this.onClose(ev); };
      ws.onerror = () => {}; // the close event that follows carries what we need
      this.statsTimer = setInterval(() => this.sendStats(), STATS_MS);
    }

    closeSocket() {
      clearInterval(this.statsTimer);
      this.statsTimer = null;
      const ws = this.ws;
      this.ws = null; // before close(): its close event must not schedule a reconnect
      if (ws && ws.readyState <= WebSocket.OPEN) {
        try { ws.close(1000); } catch (e) { /* already closing */ }
      }
    }

    onClose(ev) {
      this.closeSocket();
      if (this.stopped || this.suspended) return;
      if (this.ended) {
        this.setState("ended", "The stream has ended");
        return;
      }
      const why = ev.reason || CLOSE_TEXT[ev.code] || `closed (${ev.code})`;
      this.scheduleReconnect(why, "connecting");
    }

    /** Reconnect after min(10, 0.5 * 2^n) s, jittered to 50-100 % so many viewers do not stampede. */
    scheduleReconnect(why, state) {
      this.closeSocket();
      clearTimeout(this.retryTimer);
      const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** this.attempt);
      const delay = Math.max(BACKOFF_MIN, base * (0.5 + Math.random() * 0.5));
      this.attempt++;
      this.setState(state, `${capitalize(why)} — reconnecting in ${delay.toFixed(1)} s`);
      this.retryTimer = setTimeout(() => {
        this.reconnects++;
        this.connect();
      }, delay * 1000);
    }

    /** Tear the media down and start over from a fresh connection (and so from the live edge). */
    rebuild(why) {
      console.warn(`relay player: ${why}; rebuilding`);
      this.releaseMedia();
      this.scheduleReconnect(why, "error");
    }

    onMessage(data) {
      this.lastMessageAt = now();
      if (typeof data === "string") this.onText(data);
      else this.onBinary(data);
    }

    onText(text) {
      let msg;
      try { msg = JSON.parse(text); } catch (e) { return; }
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "init") {
        this.initMsg = msg;
        this.expectInit = true;
      } else if (msg.type === "waiting") {
        this.serverWaiting = true;
        this.setState("waiting", msg.reason ? capitalize(String(msg.reason)) : "Waiting for the stream…");
      } else if (msg.type === "end") {
        this.ended = true;
        this.setState("ended", "The stream has ended");
        this.pump(); // lets endOfStream() run once the queue is drained, so the tail plays out
      }
      // other types (skip, pong, ...) are informational
    }

    onBinary(buf) {
      const t = now();
      this.lastBinaryAt = t;
      this.bytesLog.push([t, buf.byteLength]);
      this.serverWaiting = false;
      if (this.expectInit) {
        this.expectInit = false;
        this.startMedia(buf);
        return;
      }
      if (this.unsupported || !this.ms) return; // no usable init segment to append after
      this.queue.push(buf);
      this.queueBytes += buf.byteLength;
      if (this.queueBytes > MAX_QUEUE_BYTES) return this.rebuild("append queue overflow");
      this.pump();
    }

    sendStats() {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      const s = this.stats();
      ws.send(JSON.stringify({
        type: "stats", latency: s.latencyNow, buffered: s.buffered, dropped: s.dropped, decoded: s.decoded,
        reconnects: s.reconnects, width: s.width, height: s.height, state: s.state, rate: s.playbackRate,
      }));
    }

    // -- the MediaSource -----------------------------------------------------------------------------
    resetMedia() {
      this.started = false; // the first live-edge seek of this MediaSource happened
      this.prerollUntil = 0; // while set: the first frame is shown, play() waits for enough buffer
      this.live = null; // {start, end}: the buffered range the newest data went into
      this.chunkDuration = 0; // s of media per append (EWMA): the sawtooth the controller must allow for
      this.samples = []; // [time, latency] over the controller window
      this.lastCT = -1;
      this.lastProgressAt = now(); // last time currentTime advanced by playing (our seeks do not count)
      this.lastSeekTo = -1;
      this.lastSeekAt = 0;
      this.mediaAt = now(); // when this MediaSource was created
      this.initBytesAfter = 0; // bytes received since, while nothing got buffered
    }

    startMedia(initSegment) {
      const mime = this.initMsg && this.initMsg.mime;
      const MS = mediaSourceClass();
      if (!MS) {
        return this.setUnsupported("This browser has no Media Source Extensions; " +
          "use a recent Chrome, Edge, Firefox or Safari (iOS 17.1+)");
      }
      if (!mime || !MS.isTypeSupported(mime)) {
        return this.setUnsupported(unsupportedText(MS, mime, this.initMsg && this.initMsg.tracks));
      }
      this.unsupported = false;
      this.releaseMedia();
      const gen = this.gen;
      const ms = new MS();
      this.ms = ms;
      if (MS !== window.MediaSource) this.video.disableRemotePlayback = true; // required by ManagedMediaSource
      ms.addEventListener("sourceopen", () => { if (gen === this.gen) this.onSourceOpen(mime); }, { once: true });
      this.objectUrl = URL.createObjectURL(ms);
      this.video.src = this.objectUrl;
      this.queue = [initSegment];
      this.queueBytes = initSegment.byteLength;
    }

    onSourceOpen(mime) {
      URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = null;
      const gen = this.gen;
      let sb;
      try {
        sb = this.ms.addSourceBuffer(mime);
        sb.mode = "segments"; // keep the stream's own timestamps; the live-edge logic handles jumps
      } catch (e) {
        return this.rebuild(`cannot create a SourceBuffer for ${mime}: ${e.message}`);
      }
      sb.addEventListener("updateend", () => { if (gen === this.gen) this.onUpdateEnd(); });
      sb.addEventListener("error", () => { if (gen === this.gen) this.rebuild("SourceBuffer error"); });
      this.sb = sb;
      this.pump();
    }

    releaseMedia() {
      this.gen++;
      const ms = this.ms;
      if (this.sb && ms && ms.readyState === "open") {
        try { this.sb.abort(); } catch (e) { /* nothing in flight */ }
      }
      this.sb = null;
      this.ms = null;
      if (ms) {
        this.video.removeAttribute("src");
        this.video.load(); // detaches the MediaSource and frees its memory now, not at GC time
      }
      if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = null;
      this.queue = [];
      this.queueBytes = 0;
      this.op = null;
      this.pendingRemove = null;
      this.quotaStrikes = 0;
      this.video.playbackRate = 1;
      this.resetMedia();
    }

    /** Start the next SourceBuffer operation, if it is idle: a pending remove first, then an append. */
    pump() {
      const sb = this.sb;
      if (!sb || sb.updating || !this.ms || this.ms.readyState !== "open") return;
      if (this.pendingRemove) {
        const [start, end] = this.pendingRemove;
        this.pendingRemove = null;
        if (end > start) {
          try {
            sb.remove(start, end);
            this.op = "remove";
            return;
          } catch (e) { /* the range vanished meanwhile: go on appending */ }
        }
      }
      if (!this.queue.length) {
        if (this.ended) {
          try { this.ms.endOfStream(); } catch (e) { /* already ended */ }
        }
        return;
      }
      const buf = this.queue[0];
      this.before = rangesOf(sb.buffered);
      try {
        sb.appendBuffer(buf);
      } catch (e) {
        if (e.name === "QuotaExceededError") return this.onQuota();
        return this.rebuild(`append failed: ${e.name} ${e.message}`);
      }
      this.queue.shift();
      this.queueBytes -= buf.byteLength;
      this.op = "append";
    }

    onUpdateEnd() {
      const op = this.op;
      this.op = null;
      if (op === "append") this.afterAppend();
      this.trim();
      this.pump();
    }

    afterAppend() {
      this.quotaStrikes = 0;
      const after = rangesOf(this.sb.buffered);
      const grown = grownRange(this.before || [], after);
      if (grown) {
        const prev = this.live;
        if (prev && Math.abs(grown.start - prev.start) < 1e-3) {
          const delta = grown.end - prev.end;
          if (delta > 0 && delta < 10) this.chunkDuration = 0.7 * this.chunkDuration + 0.3 * delta;
        } else if (!prev) {
          this.chunkDuration = Math.min(5, grown.end - grown.start); // the first fragment: a first guess
        }
        this.live = grown;
      }
      // Start once the burst from the GOP cache is in, so the first seek already lands at the live edge.
      if (!this.started && this.live && !this.queue.length) this.seekToLive("start");
      else this.preroll();
    }

    /** Keep `backBuffer` s behind currentTime; drop ranges stranded ahead of the live range. */
    trim() {
      if (!this.sb || this.pendingRemove || !this.started) return;
      const ranges = rangesOf(this.sb.buffered);
      if (!ranges.length) return;
      const ct = this.video.currentTime;
      const keepFrom = ct - this.opts.backBuffer;
      const slack = Math.max(1, Math.min(5, this.opts.backBuffer / 2)); // remove in batches, not per fragment
      if (keepFrom - ranges[0].start > slack) {
        this.pendingRemove = [ranges[0].start, keepFrom];
        return;
      }
      // After a timestamp restart the old timeline's media sits ahead of the live range, never to be played.
      const live = this.live;
      const stale = live && ranges.find((r) => r.start > live.end + 0.5 && !(ct >= r.start && ct < r.end));
      if (stale) this.pendingRemove = [stale.start, stale.end];
    }

    /** QuotaExceededError: evict what was played (up to currentTime - 1 s), then retry the same append. */
    onQuota() {
      this.quotaStrikes++;
      const ranges = rangesOf(this.sb.buffered);
      if (this.quotaStrikes > 3 || !ranges.length) return this.rebuild("the media buffer is full");
      let end = this.video.currentTime - 1;
      if (end <= ranges[0].start + 0.1) {
        // Nothing played to evict (e.g. paused for long): keep only the newest seconds.
        end = ranges[ranges.length - 1].end - Math.max(2, 2 * this.effectiveTarget());
      }
      if (end <= ranges[0].start) return this.rebuild("the media buffer is full and nothing can be evicted");
      this.pendingRemove = [ranges[0].start, end];
      this.pump();
    }

    // -- playback ------------------------------------------------------------------------------------
    /** Seek so that the newest data is `effectiveTarget` ahead (but not before the range's start). */
    seekToLive(why) {
      const live = this.live;
      if (!live) return;
      // Right after an append the buffer is at its fullest; landing half a fragment further back puts the
      // *mean* latency (sawtooth of one fragment) at the target instead of half a fragment below it.
      const sinceAppend = now() - this.lastBinaryAt;
      const extra = Math.max(0, this.chunkDuration / 2 - sinceAppend);
      const t = Math.max(live.start, live.end - this.effectiveTarget() - extra);
      if (why !== "start") console.info(`relay player: seek to live edge (${why}), ${this.video.currentTime.toFixed(2)} -> ${t.toFixed(2)}`);
      this.markSeek(t);
      if (!this.started) {
        // A viewer who joins just after a keyframe gets little cached media: the first frame shows at once,
        // but playing waits until the target's worth is buffered, or it would run at a latency far below
        // target (and one jitter away from a stall) for good.
        this.started = true;
        this.prerollUntil = now() + PREROLL_MAX;
        this.preroll();
      } else {
        this.play();
      }
    }

    preroll() {
      if (!this.prerollUntil || !this.live) return;
      if (this.live.end - this.video.currentTime >= this.effectiveTarget() - 0.05 || now() > this.prerollUntil) {
        this.prerollUntil = 0;
        this.play();
      }
    }

    play() {
      const v = this.video;
      if (this.opts.muted) v.muted = true;
      if (!v.paused) return;
      this.lastProgressAt = now(); // the stall clock starts when we ask to play (not during the preroll)
      const p = v.play();
      if (!p) return;
      p.then(() => this.showButton(this.playButton, false), (err) => {
        if (err.name !== "NotAllowedError") return; // AbortError & co: superseded by a newer load/seek
        if (!v.muted) { // autoplay with sound refused: play muted and offer to unmute
          v.muted = true;
          this.showButton(this.unmuteButton, this.opts.unmuteButton);
          this.play();
        } else {
          this.showButton(this.playButton, true); // even muted autoplay refused (e.g. low-power mode)
        }
      });
    }

    /** The largest timescale-independent "target": a fragment of N s cannot be shown with less than ~N/2 mean latency. */
    effectiveTarget() {
      return Math.max(this.opts.targetLatency, this.chunkDuration / 2 + SAFETY);
    }

    latencyNow() {
      return this.live && this.started ? Math.max(0, this.live.end - this.video.currentTime) : 0;
    }

    latencyAvg() {
      if (!this.samples.length) return this.latencyNow();
      return this.samples.reduce((sum, s) => sum + s[1], 0) / this.samples.length;
    }

    /** Seconds buffered ahead of `t` in the range that holds it. */
    aheadOf(t) {
      const r = this.sb ? rangesOf(this.sb.buffered).find((x) => t >= x.start - 0.05 && t < x.end) : null;
      return r ? r.end - t : 0;
    }

    /**
     * Every tick while playing:
     * 1. Not inside a buffered range: jump to the next range (a gap), or to the live range if the
     *    timeline restarted behind us.
     * 2. latency > max(maxLatency, target + fragment + 1 s): seek to the live edge.
     * 3. mean latency over the window > target + 0.2 s and the buffer never fell below SAFETY:
     *    playbackRate = 1 + 0.5 * excess (max 1.5), until the mean is within 0.05 s of target.
     * 4. the buffer trough fell below SAFETY / 2 while the mean is under target: 0.95 (refills it
     *    by 0.05 s per second instead of stalling once per fragment).
     * 5. otherwise 1.0.
     * The window spans at least 2.5 fragments, so the per-fragment sawtooth averages out.
     */
    control(t) {
      const v = this.video;
      const ranges = rangesOf(this.sb.buffered);
      if (!ranges.length || !this.live) return;
      // Re-find the live range: trimming and UA eviction (ManagedMediaSource) change the ranges.
      const live = ranges.find((r) => this.live.end >= r.start - 0.01 && this.live.end <= r.end + 0.01) || ranges[ranges.length - 1];
      this.live = live;
      const ct = v.currentTime;
      const current = ranges.find((r) => ct >= r.start - 0.01 && ct <= r.end + 0.01);
      const inLive = current && Math.abs(current.end - live.end) < 0.01;
      // Outside every range, or at the end of an older one: nothing more will play from here.
      // A seek that did not help is not repeated at once: the stall watchdog deals with a stuck decoder.
      const maySeek = t - this.lastSeekAt > 1.5;
      if (!current || (!inLive && ct >= current.end - 0.1)) {
        if (!maySeek) return;
        const next = ranges.find((r) => r.start > ct + 0.001 && r.end - r.start > 0.1);
        if (next) return this.seek(next.start + 0.01, "gap");
        if (live.end < ct - 0.5) return this.seekToLive("timeline restarted");
        return;
      }
      if (v.paused || v.seeking) return;
      const latency = live.end - ct;
      const target = this.effectiveTarget();
      const span = Math.max(2, 2.5 * this.chunkDuration);
      this.samples.push([t, latency]);
      while (this.samples.length && t - this.samples[0][0] > span) this.samples.shift();
      if (latency > Math.max(this.opts.maxLatency, target + this.chunkDuration + 1)) {
        if (maySeek) this.seekToLive("too far behind");
        return;
      }
      // A window that does not yet span whole fragments sees only part of the sawtooth: wait for it to fill.
      if (t - this.samples[0][0] < 0.8 * span) return;
      const avg = this.latencyAvg();
      const trough = Math.min(...this.samples.map((s) => s[1]));
      let rate = 1;
      const speeding = v.playbackRate > 1;
      if (avg > target + (speeding ? DEADBAND_OFF : DEADBAND_ON) && trough > SAFETY) {
        rate = Math.min(MAX_RATE, 1 + GAIN * (avg - target));
      } else if (trough < SAFETY / 2 && avg < target && this.samples.length > 4) {
        rate = SLOW_RATE;
      }
      rate = Math.round(rate * 20) / 20; // 0.05 steps: fewer rate changes, same control
      if (rate !== v.playbackRate) v.playbackRate = rate;
    }

    seek(t, why) {
      console.info(`relay player: seek (${why}) ${this.video.currentTime.toFixed(2)} -> ${t.toFixed(2)}`);
      this.markSeek(t);
    }

    markSeek(t) {
      this.video.currentTime = t;
      this.lastSeekTo = t;
      this.lastSeekAt = now();
      this.samples = [];
    }

    // -- watchdogs -----------------------------------------------------------------------------------
    tick() {
      const t = now();
      const v = this.video;
      if (this.sb && this.started) {
        this.preroll();
        this.control(t);
      }
      const ct = v.currentTime;
      const moved = ct !== this.lastCT;
      this.lastCT = ct;
      if (moved && Math.abs(ct - this.lastSeekTo) > 0.02) { // played forward, not just landed from a seek
        this.lastProgressAt = t;
        if (this.started && !v.paused && !this.serverWaiting && !this.ended && this.socketOpen() &&
            (this.state === "stalled" || this.state === "connecting" || this.state === "error" ||
             this.state === "waiting")) {
          this.setState("playing");
        }
      }
      this.watchdogs(t);
      if (Math.floor(t) !== Math.floor(t - TICK_MS / 1000)) this.renderStats(); // about once a second
    }

    watchdogs(t) {
      const v = this.video;
      const stuck = t - this.lastProgressAt;
      const playing = this.started && !v.paused && !this.serverWaiting && !this.ended;
      if (playing && this.state === "playing" && stuck > STALL_FLAG) this.setState("stalled", "Buffering…");
      if (this.state === "playing" && t - this.connectedAt > HEALTHY_AFTER) this.attempt = 0;
      if (playing && stuck > STALL_REBUILD && this.lastBinaryAt > this.lastProgressAt + 0.5) {
        return this.rebuild(`playback stuck for ${stuck.toFixed(1)} s while data kept arriving`);
      }
      if (this.ms && !this.started && this.lastBinaryAt - this.mediaAt > NO_PICTURE_REBUILD && !this.serverWaiting) {
        return this.rebuild("data arrives but nothing becomes playable");
      }
      if (this.ws && this.ws.readyState === WebSocket.OPEN && !this.serverWaiting && !this.ended &&
          t - this.lastMessageAt > SILENCE_RECONNECT) {
        this.scheduleReconnect(`nothing received for ${SILENCE_RECONNECT} s`, "connecting");
      }
    }

    socketOpen() {
      return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
    }

    bitrate() {
      const t = now();
      while (this.bytesLog.length && t - this.bytesLog[0][0] > BITRATE_WINDOW) this.bytesLog.shift();
      if (!this.bytesLog.length) return 0;
      const span = Math.min(BITRATE_WINDOW, Math.max(1, t - this.connectedAt));
      return (8 * this.bytesLog.reduce((sum, e) => sum + e[1], 0)) / span;
    }

    playbackQuality() {
      const v = this.video;
      if (v.getVideoPlaybackQuality) {
        const q = v.getVideoPlaybackQuality();
        return { decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames };
      }
      return { decoded: v.webkitDecodedFrameCount || 0, dropped: v.webkitDroppedFrameCount || 0 };
    }

    videoTrack() {
      const tracks = (this.initMsg && this.initMsg.tracks) || [];
      return tracks.find((t) => t.kind === "video") || null;
    }

    // -- page visibility: a hidden tab gives its socket and decoder back -----------------------------
    onVisibility() {
      if (document.hidden) {
        clearTimeout(this.hiddenTimer);
        this.hiddenTimer = setTimeout(() => this.suspend(), HIDDEN_RELEASE_MS);
      } else {
        clearTimeout(this.hiddenTimer);
        if (this.suspended) {
          this.suspended = false;
          this.attempt = 0;
          this.connect(); // and so a fresh start at the live edge
        }
      }
    }

    suspend() {
      if (this.stopped || this.ended || this.unsupported) return;
      this.suspended = true;
      clearTimeout(this.retryTimer);
      this.closeSocket();
      this.releaseMedia();
      this.setState("waiting", "Paused while the tab is hidden");
    }

    // -- UI ------------------------------------------------------------------------------------------
    setState(state, message) {
      this.message = message || "";
      if (state !== this.state) {
        this.state = state;
        this.video.dataset.state = state;
        this.video.dispatchEvent(new CustomEvent("relaystate", { detail: { state, message: this.message } }));
      }
      if (!this.msgBox) return;
      const show = state !== "playing" && Boolean(this.message);
      this.msgBox.hidden = !show;
      this.msgBox.dataset.state = state;
      this.msgText.textContent = this.message;
      this.retryButton.hidden = state !== "ended" && state !== "unsupported";
      if (state === "stalled" || state === "connecting") this.msgBox.classList.add("rp-busy");
      else this.msgBox.classList.remove("rp-busy");
    }

    /** Say exactly what cannot be played, and stop: retrying would only download what we cannot show. */
    setUnsupported(text) {
      this.unsupported = true;
      this.closeSocket();
      clearTimeout(this.retryTimer);
      this.releaseMedia();
      this.setState("unsupported", text);
      console.warn(`relay player: ${text}`);
    }

    buildUi() {
      this.uiElements = [];
      this.listeners = [];
      const parent = this.video.parentElement;
      if (!this.opts.ui || !parent) return;
      const el = (tag, cls, html) => {
        const e = document.createElement(tag);
        e.className = cls;
        if (html) e.innerHTML = html; // constant markup only
        parent.appendChild(e);
        this.uiElements.push(e);
        return e;
      };
      this.msgBox = el("div", "rp-message");
      this.msgBox.setAttribute("role", "status");
      this.msgBox.innerHTML = '<span class="rp-spinner" aria-hidden="true"></span><span class="rp-text"></span>' +
        '<button type="button" class="rp-retry" hidden>Try again</button>';
      this.msgText = this.msgBox.querySelector(".rp-text");
      this.retryButton = this.msgBox.querySelector(".rp-retry");
      this.retryButton.addEventListener("click", () => this.restart());
      this.unmuteButton = el("button", "rp-unmute", `${SPEAKER_OFF}<span>Unmute</span>`);
      this.unmuteButton.type = "button";
      this.unmuteButton.hidden = true;
      this.unmuteButton.addEventListener("click", () => {
        this.video.muted = false;
        this.showButton(this.unmuteButton, false);
        this.video.play().catch(() => {});
      });
      this.playButton = el("button", "rp-play", `${PLAY}<span>Play</span>`);
      this.playButton.type = "button";
      this.playButton.hidden = true;
      this.playButton.addEventListener("click", () => {
        this.showButton(this.playButton, false);
        this.video.play().catch(() => {});
      });
    }

    showButton(button, show) {
      if (button) button.hidden = !show;
    }

    listen() {
      const on = (target, type, fn) => {
        target.addEventListener(type, fn);
        this.listeners.push([target, type, fn]);
      };
      on(document, "visibilitychange", () => this.onVisibility());
      on(this.video, "error", () => {
        const err = this.video.error;
        if (this.ms && err) this.rebuild(`media error ${err.code}${err.message ? ": " + err.message : ""}`);
      });
      on(this.video, "volumechange", () => { if (!this.video.muted) this.showButton(this.unmuteButton, false); });
      on(this.video, "playing", () => {
        this.showButton(this.playButton, false);
        if (this.started && !this.serverWaiting && !this.ended && this.socketOpen()) this.setState("playing");
      });
    }

    renderStats() {
      const el = this.opts.statsOverlay;
      if (!el || el.hidden) return;
      const s = this.stats();
      const rows = [
        ["State", s.state],
        ["Resolution", s.width ? `${s.width}×${s.height}` : "–"],
        ["Codec", s.codec || "–"],
        ["Bitrate", formatBitrate(s.bitrate)],
        ["Latency", `${s.latency.toFixed(2)} s (now ${s.latencyNow.toFixed(2)}, target ${s.targetLatency.toFixed(2)})`],
        ["Buffered", `${s.buffered.toFixed(2)} s`],
        ["Rate", `${s.playbackRate.toFixed(2)}×`],
        ["Fragment", s.fragmentDuration ? `${s.fragmentDuration.toFixed(2)} s` : "–"],
        ["Frames", `${s.dropped} dropped / ${s.decoded} decoded`],
        ["Reconnects", String(s.reconnects)],
      ];
      const frag = document.createDocumentFragment();
      for (const [k, val] of rows) {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = val;
        frag.append(dt, dd);
      }
      let dl = el.querySelector("dl");
      if (!dl) {
        dl = document.createElement("dl");
        el.appendChild(dl);
      }
      dl.replaceChildren(frag);
    }
  }

  function round(x, digits) {
    const f = 10 ** digits;
    return Math.round((Number.isFinite(x) ? x : 0) * f) / f;
  }

  function capitalize(s) {
    return s ? s[0].toUpperCase() + s.slice(1) : s;
  }

  function formatBitrate(bps) {
    if (!bps) return "–";
    if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
    return `${Math.round(bps / 1e3)} kbit/s`;
  }

  RelayPlayer.codecInfo = codecInfo;
  RelayPlayer.parseCodecs = parseCodecs;
  RelayPlayer.formatBitrate = formatBitrate;
  window.RelayPlayer = RelayPlayer;
})();
