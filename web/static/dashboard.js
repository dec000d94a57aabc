/* Dashboard: keeps the server-rendered page current by polling /api/streams every 2 s (no reloads), and shows
 * each live stream's thumbnail, refreshed every 5 s while the page is visible (streams with video only). */
(function () {
  "use strict";

  const POLL_MS = 2000;
  const RECORDINGS_MS = 30000; // the recordings list is refreshed this often, and when streams come or go
  const F = window.relayFormat;
  const list = document.getElementById("streams");
  const template = document.getElementById("card-template");
  const empty = document.getElementById("no-streams");
  const count = document.getElementById("live-count");
  const updated = document.getElementById("updated");
  const endedSection = document.getElementById("ended-section");
  const endedList = document.getElementById("ended");
  let knownIds = new Set([...list.querySelectorAll(".stream")].map((c) => c.dataset.botId));
  let recordingsAt = Date.now();
  let failures = 0;

  function field(card, name) {
    return card.querySelector(`[data-field="${name}"]`);
  }

  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }

  function cardFor(status) {
    for (const c of list.querySelectorAll(".stream")) if (c.dataset.botId === status.bot_id) return c;
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.botId = status.bot_id;
    list.appendChild(card);
    return card;
  }

  function fill(card, s) {
    const watch = F.watchUrl(s.bot_id);
    const link = field(card, "link");
    setText(link, s.bot_id);
    link.href = watch;
    field(card, "watch").href = watch;
    card.dataset.state = s.state;
    const badge = field(card, "state");
    setText(badge, s.state);
    badge.dataset.state = s.state;
    const stalled = F.isStalled(s);
    card.classList.toggle("is-stalled", stalled);
    field(card, "stalled").hidden = !stalled;
    F.renderMeeting(field(card, "meeting"), s.meta);
    setText(field(card, "uptime"), F.duration(s.uptime));
    setText(field(card, "bitrate"), F.bitrate(s.bitrate));
    setText(field(card, "resolution"), F.resolution(s));
    const [codec, full] = F.codecs(s);
    setText(field(card, "codec"), codec);
    field(card, "codec").title = full;
    setText(field(card, "viewers"), String(s.viewers || 0));
    setText(field(card, "age"), F.age(s.last_fragment_age));
    const recording = field(card, "recording");
    const recordingUrl = F.recordingUrl(s.bot_id, s.recording && s.recording.path);
    setText(recording, s.recording ? `recording ${F.bytes(s.recording.bytes)}` : "");
    recording.hidden = !recordingUrl;
    if (recordingUrl) recording.href = recordingUrl;
    thumbnail(card, s, watch);
  }

  /** Show the stream's latest keyframe; a new URL (so a new picture) every F.THUMB_MS, only while visible. */
  function thumbnail(card, s, watch) {
    const box = field(card, "thumb");
    const video = F.hasVideo(s);
    box.hidden = !video;
    if (!video) return; // audio only, or no init segment yet: nothing to ask for
    box.href = watch;
    if (document.visibilityState !== "visible") return;
    const img = field(card, "thumb-img");
    const url = F.thumbnailUrl(s.bot_id);
    if (img.getAttribute("src") !== url) img.src = url;
  }

  // load and error do not bubble: listen on the way down. A failed thumbnail is hidden, not shown broken.
  list.addEventListener("load", (ev) => {
    if (ev.target.dataset.field === "thumb-img") ev.target.closest(".thumb").classList.add("has-picture");
  }, true);
  list.addEventListener("error", (ev) => {
    if (ev.target.dataset.field === "thumb-img") ev.target.closest(".thumb").classList.remove("has-picture");
  }, true);

  function renderEnded(ended) {
    endedSection.hidden = !ended.length;
    endedList.replaceChildren(...ended.map((s) => {
      const li = document.createElement("li");
      li.className = "row";
      const cell = (text, cls) => {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = text;
        return span;
      };
      li.append(cell(s.bot_id, "row-main"), cell(`ended ${F.time(s.ended_at)}`, "muted"),
        cell(`ran ${F.duration(s.uptime)}`, "muted"), cell(F.bytes(s.bytes_in), "muted"));
      const rec = F.recordingUrl(s.bot_id, s.recording && s.recording.path);
      if (rec) {
        const a = document.createElement("a");
        a.href = rec;
        a.textContent = "recording";
        li.append(a);
      }
      return li;
    }));
  }

  function render(data) {
    const streams = data.streams || [];
    const ids = new Set(streams.map((s) => s.bot_id));
    for (const s of streams) fill(cardFor(s), s);
    for (const c of list.querySelectorAll(".stream")) if (!ids.has(c.dataset.botId)) c.remove();
    empty.hidden = streams.length > 0;
    setText(count, String(streams.length));
    document.title = `relay · ${streams.length} live`;
    renderEnded(data.ended || []);
    const changed = ids.size !== knownIds.size || [...ids].some((id) => !knownIds.has(id));
    knownIds = ids;
    if (changed || Date.now() - recordingsAt > RECORDINGS_MS) refreshRecordings();
  }

  /** The recordings list has no API of its own: take the section from a fresh render of this page. */
  async function refreshRecordings() {
    recordingsAt = Date.now();
    try {
      const res = await fetch(location.pathname, { cache: "no-store" });
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("recordings");
      const current = document.getElementById("recordings");
      if (fresh && current) current.replaceWith(document.importNode(fresh, true));
    } catch (e) { /* next time */ }
  }

  async function poll() {
    try {
      const res = await fetch("/api/streams", { cache: "no-store" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      render(await res.json());
      failures = 0;
      setText(updated, `updated ${new Date().toLocaleTimeString()}`);
      updated.classList.remove("is-error");
    } catch (e) {
      failures++;
      setText(updated, `relay unreachable (${e.message}); retrying`);
      updated.classList.add("is-error");
    } finally {
      // back off gently while the relay is down, so a dead server is not hammered by open dashboards
      setTimeout(poll, failures ? Math.min(10000, POLL_MS * 2 ** Math.min(failures, 3)) : POLL_MS);
    }
  }

  poll();
})();
