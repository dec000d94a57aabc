/* One recording's player: the byte-range HLS playlist over the recording file, played with hls.js (installed
 * from the npm registry, served at /vendor/hls.min.js) or by the browser itself where only that works
 * (Safari on older iPhones). Seekable; a recording still being written has an EVENT playlist that hls.js
 * reloads, so the page can rewind a meeting that is still going on. Errors are said on the video, never
 * swallowed. ?t=SECONDS starts there; ?native=1 prefers the browser's own HLS; ?debug=1 has hls.js log to the console. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const F = window.relayFormat;
  const root = $("recording");
  const video = $("video");
  const box = $("message");
  const note = $("hls-note");
  const src = root.dataset.playlist;
  const params = new URLSearchParams(location.search);
  const start = Math.max(0, parseFloat(params.get("t")) || 0);
  const MAX_MEDIA_RECOVERIES = 2;
  let live = root.dataset.state === "recording";
  let hls = null;
  let mediaRecoveries = 0;
  let noteTimer = null;
  // For tests and the console: how it plays, and the hls.js instance.
  const state = window.recordingPlayer = { mode: "", hls: null, errors: [], live };

  /** A message over the video: kind "loading" (spinner), "error" (with Try again) or "" to hide it. */
  function show(text, kind) {
    box.hidden = !text;
    $("message-text").textContent = text || "";
    box.dataset.state = kind || "";
    box.classList.toggle("rp-busy", kind === "loading");
    $("retry").hidden = kind !== "error";
  }

  /** A problem playback got over by itself: said under the video for a while. */
  function flash(text) {
    note.textContent = text;
    note.hidden = false;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(() => { note.hidden = true; }, 10000);
  }

  function describe(data) {
    let text = `${data.details || data.type}`;
    const code = data.response && data.response.code;
    if (code) text += ` (HTTP ${code})`;
    const reason = data.reason || (data.error && data.error.message);
    if (reason && !text.includes(reason)) text += `: ${reason}`;
    return text;
  }

  function play() {
    const p = video.play();
    if (p) p.catch(() => { /* autoplay refused: the controls' play button is there */ });
  }

  // -- hls.js ------------------------------------------------------------------------------------------
  function startHls(at) {
    const Hls = window.Hls;
    hls = state.hls = new Hls({
      startPosition: at,
      backBufferLength: 60,
      debug: params.get("debug") === "1",
      // fetch() rather than XHR, so that every request can bypass the HTTP cache: the browser keeps byte ranges
      // of the file with the length it had then, and cuts later ranges of a growing recording to that length
      progressive: true,
      fetchSetup: (context, init) => new Request(context.url, Object.assign({}, init, { cache: "no-store" })),
    });
    state.mode = `hls.js ${Hls.version}`;
    $("rec-playback").textContent = `via ${state.mode}`;
    hls.on(Hls.Events.ERROR, (event, data) => {
      const what = describe(data);
      state.errors.push({ fatal: Boolean(data.fatal), type: data.type, details: data.details });
      console.warn("hls.js:", data.fatal ? "fatal" : "recovered", what, data);
      if (!data.fatal) {
        flash(`Playback hiccup, recovered: ${what}`);
        return;
      }
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries < MAX_MEDIA_RECOVERIES) {
        mediaRecoveries++;
        show(`Media error (${what}); recovering…`, "loading");
        hls.recoverMediaError();
        return;
      }
      const where = data.type === Hls.ErrorTypes.NETWORK_ERROR ? "Could not load the recording" : "Cannot play the recording";
      show(`${where}: ${what}`, "error");
      hls.destroy();
      hls = state.hls = null;
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => { show(""); play(); });
    hls.on(Hls.Events.LEVEL_UPDATED, (event, data) => playlistChanged(data.details));
    hls.on(Hls.Events.LEVEL_LOADED, (event, data) => playlistChanged(data.details));
    hls.loadSource(src);
    hls.attachMedia(video);
  }

  /** A (re)loaded playlist: the recording's length so far, and whether it has ended since the page loaded. */
  function playlistChanged(details) {
    if (!details) return;
    if (details.live) $("rec-duration").textContent = F.duration(details.totalduration);
    if (live && !details.live) ended();
  }

  // -- the browser's own HLS ----------------------------------------------------------------------------
  function startNative(at) {
    state.mode = "native HLS";
    $("rec-playback").textContent = `via ${state.mode}`;
    video.addEventListener("loadedmetadata", () => {
      show("");
      if (at) video.currentTime = at;
      play();
    }, { once: true });
    video.src = src;
  }

  video.addEventListener("error", () => {
    if (state.mode !== "native HLS" || !video.error) return; // hls.js reports its own
    const err = video.error;
    state.errors.push({ fatal: true, type: "media", details: `code ${err.code}` });
    show(`Cannot play the recording: ${err.message || `media error ${err.code}`}`, "error");
  });
  video.addEventListener("waiting", () => { if (box.hidden) show("Loading…", "loading"); });
  video.addEventListener("playing", () => { if (box.dataset.state === "loading") show(""); });
  video.addEventListener("seeked", () => { if (box.dataset.state === "loading") show(""); });
  video.addEventListener("canplay", () => { if (box.dataset.state === "loading") show(""); });

  // -- a recording still being written: its facts kept current, and its end noticed --------------------
  const FACTS_MS = 5000;

  /** The facts, size and duration from a fresh render of this page (the server knows them best). */
  async function refreshFacts() {
    try {
      const res = await fetch(location.pathname, { cache: "no-store", headers: { Accept: "text/html" } });
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const facts = doc.getElementById("rec-facts");
      if (facts) $("rec-facts").replaceWith(document.importNode(facts, true));
      for (const id of ["rec-size", "rec-duration"]) {
        const fresh = doc.getElementById(id);
        if (fresh && (id !== "rec-duration" || !live)) $(id).textContent = fresh.textContent; // live: the playlist's
      }
    } catch (e) { /* the player goes on; the facts stay as they were */ }
  }

  function ended() {
    live = state.live = false;
    const badge = $("rec-state");
    badge.textContent = "complete";
    badge.dataset.state = "complete";
    const liveNote = $("rec-live-note");
    if (liveNote) liveNote.hidden = true;
    flash("The recording has ended: it is complete now.");
    refreshFacts();
  }

  if (live) {
    setTimeout(function tick() {
      if (!live) return;
      if (document.visibilityState === "visible") refreshFacts();
      setTimeout(tick, FACTS_MS);
    }, FACTS_MS);
  }

  const latest = $("to-latest");
  if (latest) {
    latest.addEventListener("click", () => {
      const s = video.seekable;
      const edge = hls && hls.liveSyncPosition != null ? hls.liveSyncPosition
        : s.length ? Math.max(s.start(s.length - 1), s.end(s.length - 1) - 3) : video.duration;
      if (Number.isFinite(edge)) video.currentTime = edge;
      play();
    });
  }

  // -- start ------------------------------------------------------------------------------------------
  function begin(at) {
    mediaRecoveries = 0;
    show("Loading…", "loading");
    const preferNative = params.get("native") === "1";
    const native = Boolean(video.canPlayType("application/vnd.apple.mpegurl"));
    if (window.Hls && window.Hls.isSupported() && !(preferNative && native)) startHls(at);
    else if (native) startNative(at);
    else if (!window.Hls) {
      show("The HLS player (hls.js) is not installed on this relay: run `make deps` on the server. " +
        "The recording can still be downloaded below.", "error");
    } else {
      show("This browser can play neither HLS nor Media Source Extensions: download the recording instead.", "error");
    }
  }

  $("retry").addEventListener("click", () => {
    const at = video.currentTime || start;
    if (hls) hls.destroy();
    hls = state.hls = null;
    video.removeAttribute("src");
    video.load();
    begin(at);
  });

  begin(start);
})();
