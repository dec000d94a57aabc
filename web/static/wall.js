/* The wall: a tile with a small muted RelayPlayer per live stream (or per ?ids=a,b,c). Polls
 * /api/streams every 2 s to add tiles for new streams and mark ended ones. */
(function () {
  "use strict";

  const POLL_MS = 2000;
  const FORGET_ENDED_MS = 60000; // an ended tile (not asked for by ?ids) is removed after this long
  const wall = document.getElementById("wall");
  const empty = document.getElementById("wall-empty");
  const count = document.getElementById("wall-count");
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
    el.innerHTML = '<div class="tile-video"><video muted playsinline></video></div>' +
      '<figcaption><a></a><span class="badge"></span></figcaption>';
    const a = el.querySelector("a");
    a.href = window.relayFormat.watchUrl(botId);
    a.textContent = botId;
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
    const video = el.querySelector("video");
    const player = new window.RelayPlayer(video, wsUrl(botId), {
      targetLatency: 0.8, backBuffer: 4, muted: true, unmuteButton: false,
    });
    const tile = { el, player, endedAt: 0 };
    video.addEventListener("relaystate", (ev) => setBadge(tile, ev.detail.state));
    setBadge(tile, player.state);
    tiles.set(botId, tile);
    window.relayPlayers[botId] = player;
    return tile;
  }

  function removeTile(botId) {
    const tile = tiles.get(botId);
    if (!tile) return;
    tile.player.destroy();
    tile.el.remove();
    tiles.delete(botId);
    delete window.relayPlayers[botId];
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
        tile.player.restart();
      }
    }
    const now = Date.now();
    for (const [id, tile] of tiles) {
      if (live.has(id)) continue;
      if (!tile.endedAt && (data.ended || []).some((s) => s.bot_id === id)) {
        tile.endedAt = now;
        tile.el.classList.add("is-ended");
      }
      if (!fixed && tile.endedAt && now - tile.endedAt > FORGET_ENDED_MS) removeTile(id);
    }
    empty.hidden = tiles.size > 0;
    count.textContent = String(fixed ? fixed.filter((id) => live.has(id)).length : live.size);
  }

  async function poll() {
    try {
      const res = await fetch("/api/streams", { cache: "no-store" });
      if (res.ok) update(await res.json());
    } catch (e) { /* the players show connection trouble themselves */ }
    setTimeout(poll, POLL_MS);
  }

  // Take over the tiles the server rendered, then keep them current.
  for (const el of wall.querySelectorAll(".tile")) addTile(el.dataset.botId, el);
  empty.hidden = tiles.size > 0;
  poll();
})();
