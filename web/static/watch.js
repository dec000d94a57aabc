/* The watch page: one RelayPlayer, its controls, and the status line under it. */
(function () {
  "use strict";

  const F = window.relayFormat;
  const root = document.getElementById("watch");
  const botId = root.dataset.botId;
  const video = document.getElementById("video");
  const statsBox = document.getElementById("stats");
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);

  // ws: or wss: from the page's own scheme, so it works behind a TLS-terminating proxy.
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/ws/watch/${encodeURIComponent(botId)}`;
  const number = (name, fallback) => {
    const v = parseFloat(params.get(name));
    return Number.isFinite(v) && v > 0 ? v : fallback;
  };
  const player = new window.RelayPlayer(video, url, {
    targetLatency: number("latency", 1.0), // ?latency=0.5 to experiment
    maxLatency: number("maxLatency", 3.0),
    backBuffer: number("backBuffer", 10),
    muted: params.get("muted") === "1",
    statsOverlay: statsBox,
  });
  window.relayPlayer = player;

  // -- controls ---------------------------------------------------------------------------------
  const muteButton = $("btn-mute");
  const statsButton = $("btn-stats");
  const fullButton = $("btn-full");

  function syncMute() {
    muteButton.textContent = video.muted ? "Unmute" : "Mute";
  }
  function toggleStats() {
    player.toggleStats();
    statsButton.setAttribute("aria-pressed", String(!statsBox.hidden));
  }
  function toggleFullscreen() {
    const box = $("player");
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else if (box.requestFullscreen) box.requestFullscreen().catch(() => {});
    else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iPhone: only the video can
  }
  muteButton.addEventListener("click", () => { video.muted = !video.muted; if (!video.muted) video.play().catch(() => {}); });
  video.addEventListener("volumechange", syncMute);
  statsButton.addEventListener("click", toggleStats);
  fullButton.addEventListener("click", toggleFullscreen);
  video.addEventListener("dblclick", toggleFullscreen);
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || /^(INPUT|TEXTAREA|SELECT)$/.test(ev.target.tagName)) return;
    if (ev.key === "s") toggleStats();
    else if (ev.key === "m") muteButton.click();
    else if (ev.key === "f") toggleFullscreen();
  });
  if (params.get("stats") === "1") toggleStats();
  syncMute();

  // -- status line: the player's own numbers every second, the relay's every 2 s -----------------
  let server = null; // this stream's /api/streams entry, or null when it is not live

  /** Set a status item's text; an unknown value ("–" or empty) hides the item instead of showing a dash. */
  function setText(id, text, wrapper) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
    $(wrapper || id).hidden = !text || text === "–";
  }

  function renderStatus() {
    const s = player.stats();
    // The relay knows better while its bot is away: the player alone would only see a stall.
    const state = server && server.state === "reconnecting" && s.state !== "playing" ? "reconnecting" : s.state;
    const badge = $("st-state");
    setText("st-state", state);
    badge.dataset.state = state;
    if (s.width) setText("st-resolution", `${s.width}×${s.height}`);
    else setText("st-resolution", server ? F.resolution(server) : "");
    if (s.codec) {
      setText("st-codec", s.codec.split(",").map(F.codecName).join(" · "));
      $("st-codec").title = s.codec;
    }
    setText("st-latency", s.state === "playing" ? `${s.latency.toFixed(2)} s` : "", "st-latency-wrap");
    setText("st-bitrate", F.bitrate(s.state === "playing" ? s.bitrate : server && server.bitrate));
    if (server) setText("st-viewers", `${server.viewers || 0} viewer${server.viewers === 1 ? "" : "s"}`);
  }

  async function poll() {
    try {
      const res = await fetch("/api/streams", { cache: "no-store" });
      if (res.ok) {
        const data = await res.json();
        const live = (data.streams || []).find((s) => s.bot_id === botId) || null;
        if (live && (!server || JSON.stringify(live.meta) !== JSON.stringify(server.meta))) {
          F.renderMeeting($("st-meeting"), live.meta);
        }
        server = live;
        // The stream came back after it ended (same bot id): play it again.
        if (live && live.state === "live" && player.state === "ended") {
          player.restart();
        }
      }
    } catch (e) { /* the player reports connection trouble itself */ }
    setTimeout(poll, 2000);
  }

  setInterval(renderStatus, 1000);
  video.addEventListener("relaystate", renderStatus);
  poll();
})();
