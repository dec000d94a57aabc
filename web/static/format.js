/* Formatting shared by the page scripts: twins of the helpers in relay/pages.py, so a value reads the
 * same in the server-rendered first paint and after a JavaScript refresh. Defines window.relayFormat. */
(function () {
  "use strict";

  const STALLED_AFTER = 5; // s since the last fragment after which a live stream is flagged (pages.py)
  const TECHNICAL = new Set(["type", "bot_id", "container", "codec", "width", "height", "framerate", "audio_codec",
    "audio_sample_rate", "audio_bitrate", "audio_channels", "sample_rate", "channels", "bitrate"]);
  const MEETING_FIRST = ["meeting_title", "title", "meeting_name", "platform", "meeting_id", "meeting_url", "bot_name"];
  const CODEC_NAMES = [[["avc1", "avc3"], "H.264"], [["hvc1", "hev1"], "HEVC"], [["vp09"], "VP9"], [["vp08"], "VP8"],
    [["av01"], "AV1"], [["mp4a"], "AAC"], [["opus", "Opus"], "Opus"], [["fLaC", "flac"], "FLAC"]];

  const pad = (n) => String(n).padStart(2, "0");

  function duration(seconds) {
    if (seconds == null) return "–";
    const s = Math.floor(Math.max(0, seconds));
    const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
    return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
  }

  function bitrate(bps) {
    if (!bps) return "–";
    return bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mbit/s` : `${Math.round(bps / 1e3)} kbit/s`;
  }

  function bytes(n) {
    if (n == null) return "–";
    const units = ["B", "KB", "MB", "GB"];
    for (let i = 0; i < units.length; i++) {
      if (n < 1024 || i === units.length - 1) return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
      n /= 1024;
    }
    return "";
  }

  function age(seconds) {
    if (seconds == null) return "never";
    return seconds < 60 ? `${seconds.toFixed(1)} s ago` : `${duration(seconds)} ago`;
  }

  function time(ts) {
    if (ts == null) return "–";
    return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function codecName(codec) {
    for (const [prefixes, name] of CODEC_NAMES) if (prefixes.some((p) => codec.startsWith(p))) return name;
    return codec.split(".")[0];
  }

  function resolution(status) {
    const video = (status.tracks || []).find((t) => t.kind === "video") || {};
    const meta = status.meta || {};
    const w = video.width || meta.width, h = video.height || meta.height;
    if (!(w && h)) return "–";
    const fps = meta.framerate;
    return `${w}×${h}` + (typeof fps === "number" && fps > 0 ? ` @ ${+fps.toFixed(1)} fps` : "");
  }

  /** ["H.264 · AAC", "avc1.42C01F, mp4a.40.2"] */
  function codecs(status) {
    const tracks = (status.tracks || []).filter((t) => t.codec);
    if (tracks.length) return [tracks.map((t) => codecName(t.codec)).join(" · "), tracks.map((t) => t.codec).join(", ")];
    const meta = status.meta || {};
    const names = ["codec", "audio_codec"].filter((k) => meta[k]).map((k) => String(meta[k]));
    return [names.join(" · ") || "–", ""];
  }

  /** The start message's meeting fields as [label, value] pairs, the well-known ones first. */
  function meeting(meta) {
    meta = meta || {};
    const keys = MEETING_FIRST.filter((k) => k in meta);
    keys.push(...Object.keys(meta).filter((k) => !TECHNICAL.has(k) && !keys.includes(k)).sort());
    const out = [];
    for (const key of keys) {
      const v = meta[key];
      if ((typeof v === "string" || typeof v === "number") && String(v).trim()) {
        out.push([key.replace(/_/g, " "), String(v).slice(0, 120)]);
      }
    }
    return out.slice(0, 6);
  }

  function watchUrl(botId) {
    return `/watch/${encodeURIComponent(botId)}`;
  }

  /** The player page of the recording at `path` (pages.recording_link). */
  function recordingUrl(botId, path) {
    if (!path) return null;
    const name = path.split(/[\\/]/).pop().replace(/\.mp4$/, "");
    return `/recordings/${encodeURIComponent(botId)}/${encodeURIComponent(name)}`;
  }

  const THUMB_MS = 5000; // a thumbnail URL changes this often (the relay makes one per stream per interval)

  /** The stream has a video track (only those get a thumbnail request). */
  function hasVideo(status) {
    return (status.tracks || []).some((t) => t.kind === "video");
  }

  /** The thumbnail URL of the current 5-second slot: the same for every page open at that moment. */
  function thumbnailUrl(botId) {
    return `/api/streams/${encodeURIComponent(botId)}/thumbnail.jpg?t=${Math.floor(Date.now() / THUMB_MS)}`;
  }

  function isStalled(status) {
    const a = status.last_fragment_age;
    return status.state === "live" && (a == null || a > STALLED_AFTER) && (status.uptime || 0) > STALLED_AFTER;
  }

  /** Fill <ul> with meeting chips. */
  function renderMeeting(ul, meta) {
    ul.replaceChildren(...meeting(meta).map(([label, value]) => {
      const li = document.createElement("li");
      const span = document.createElement("span");
      span.textContent = label;
      li.append(span, " " + value);
      return li;
    }));
  }

  window.relayFormat = { duration, bitrate, bytes, age, time, codecName, resolution, codecs, meeting, watchUrl,
    recordingUrl, isStalled, renderMeeting, hasVideo, thumbnailUrl, STALLED_AFTER, THUMB_MS };
})();
