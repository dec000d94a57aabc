/* The wall: a tile with a small muted RelayPlayer per live stream (or per ?ids=a,b,c), its thumbnail as the
 * poster until it plays; or, with ?thumbs=1, thumbnails only (refreshed every 5 s while the page is visible),
 * so a hundred bots can be watched at a glance without a hundred players. Polls /api/streams every 2 s to
 * add tiles for new streams and mark ended ones. */
(function () {
  "use strict";

  const POLL_MS = 2000;
  const FORGET_ENDED_MS = 60000; // an ended tile (not asked for by ?ids) is removed after this long
  const F = window.relayFormat;
  const wall = document.getElementById("wall");
  const empty = document.getElementById("wall-empty");
  const count = document.getElementById("wall-count");
  const thumbsOnly = wall.dataset.mode === "thumbs";
  const fixed = wall.dataset.ids ? wall.dataset.ids.split(",").filter(Boolean) : null;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const tiles = new Map(); // bot id -> {el, player, endedAt}
  window.relayPlayers = {}; // bot id -> RelayPlayer, for tests and the console

  function wsUrl(botId) {
    return `${scheme}//${location.host}/ws/watch/${encodeURIComponent(botId)}`;
  }

  function makeTile(botId) {
    const el = document.createElement("figure");
    el.className = "tile";
    el.dataset.botId = botId;
    const media = thumbsOnly
      ? '<a class="thumb" tabindex="-1" aria-hidden="true"><img alt="" decoding="async" loading="lazy">' +
        '<span class="thumb-note">no picture yet</span></a>'
      : "<video muted playsinline></video>";
    el.innerHTML = `<div class="tile-video">${media}</div>` + // constant markup only
      '<figcaption><a></a><span class="badge"></span></figcaption>';
    const a = el.querySelector("figcaption a");
    a.href = F.watchUrl(botId);
    a.textContent = botId;
    if (thumbsOnly) el.querySelector(".thumb").href = a.href;
    wall.appendChild(el);
    return el;
  }

  function setBadge(tile, state) {
    const badge = tile.el.querySelector(".badge");
    if (badge.textContent !== state) badge.textContent = state;
    badge.dataset.state = state;
    tile.el.dataset.state = state;
  }

  function addTile(botId, el) {
    el = el || makeTile(botId);
    const tile = { el, player: null, endedAt: 0 };
    tiles.set(botId, tile);
    if (thumbsOnly) {
      const img = el.querySelector(".thumb img");
      img.addEventListener("load", () => img.parentElement.classList.add("has-picture"));
      img.addEventListener("error", () => img.parentElement.classList.remove("has-picture"));
      setBadge(tile, el.dataset.state || "waiting");
      return tile;
    }
    const video = el.querySelector("video");
    tile.player = new window.RelayPlayer(video, wsUrl(botId), {
      targetLatency: 0.8, backBuffer: 4, muted: true, unmuteButton: false,
    });
    video.addEventListener("relaystate", (ev) => setBadge(tile, ev.detail.state));
    setBadge(tile, tile.player.state);
    window.relayPlayers[botId] = tile.player;
    return tile;
  }

  function removeTile(botId) {
    const tile = tiles.get(botId);
    if (!tile) return;
    if (tile.player) tile.player.destroy();
    tile.el.remove();
    tiles.delete(botId);
    delete window.relayPlayers[botId];
  }

  /** The stream's latest keyframe: the picture of a thumbnail tile, or the poster of a player not playing yet. */
  function thumbnail(tile, s) {
    if (!s || !F.hasVideo(s) || document.visibilityState !== "visible") return; // no request without video
    const url = F.thumbnailUrl(s.bot_id);
    if (thumbsOnly) {
      const img = tile.el.querySelector(".thumb img");
      if (img.getAttribute("src") !== url) img.src = url;
    } else if (tile.player.state !== "playing") {
      const video = tile.el.querySelector("video");
      if (video.getAttribute("poster") !== url) video.poster = url;
    }
  }

  function update(data) {
    const live = new Map((data.streams || []).map((s) => [s.bot_id, s]));
    const wanted = fixed || [...live.keys()];
    for (const id of wanted) {
      const tile = tiles.get(id) || addTile(id);
      const s = live.get(id);
      if (s && tile.endedAt) { // it is back: start its player again
        tile.endedAt = 0;
        tile.el.classList.remove("is-ended");
        if (tile.player) tile.player.restart();
      }
      if (thumbsOnly) setBadge(tile, s ? s.state : tile.endedAt ? "ended" : "waiting");
      thumbnail(tile, s);
    }
    const now = Date.now();
    for (const [id, tile] of tiles) {
      if (live.has(id)) continue;
      if (!tile.endedAt && (data.ended || []).some((s) => s.bot_id === id)) {
        tile.endedAt = now;
        tile.el.classList.add("is-ended");
        if (thumbsOnly) setBadge(tile, "ended");
      }
      if (!fixed && tile.endedAt && now - tile.endedAt > FORGET_ENDED_MS) removeTile(id);
    }
    empty.hidden = tiles.size > 0;
    count.textContent = String(fixed ? fixed.filter((id) => live.has(id)).length : live.size);
  }

  let timer = null;
  let polling = false;
  async function poll() {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    try {
      const res = await fetch("/api/streams", { cache: "no-store" });
      if (res.ok) update(await res.json());
    } catch (e) { /* the players show connection trouble themselves */ }
    polling = false;
    timer = setTimeout(poll, POLL_MS);
  }
  // Back in view: fresh pictures at once rather than at the next tick.
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") poll(); });

  // Take over the tiles the server rendered, then keep them current.
  for (const el of wall.querySelectorAll(".tile")) addTile(el.dataset.botId, el);
  empty.hidden = tiles.size > 0;
  poll();
})();
