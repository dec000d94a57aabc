/* The recordings page: filter by bot id, delete (two clicks, then DELETE /recordings/<bot>/<name>), and keep
 * the list current (durations of recordings still being written, new recordings) from a fresh render. */
(function () {
  "use strict";

  const REFRESH_LIVE_MS = 10000; // while a listed recording is still being written
  const REFRESH_MS = 60000; // otherwise
  const CONFIRM_MS = 4000; // a Delete button waits this long for its confirming second click
  const $ = (id) => document.getElementById(id);
  const filter = $("rec-filter");
  const notice = $("rec-notice");
  const count = $("rec-count");

  function rows() {
    return [...document.querySelectorAll("#rec-list tbody tr")];
  }

  // -- messages ------------------------------------------------------------------------------------
  /** Say what happened; `parts` are strings and elements (a sign-in link). */
  function say(kind, ...parts) {
    notice.replaceChildren(...parts);
    notice.dataset.kind = kind;
    notice.hidden = false;
  }

  function link(text, href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  // -- filter ----------------------------------------------------------------------------------------
  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const tr of rows()) {
      const match = !q || tr.dataset.botId.toLowerCase().includes(q) || tr.dataset.name.toLowerCase().includes(q);
      tr.hidden = !match;
      if (match) shown++;
    }
    const none = $("rec-no-match");
    if (none) none.hidden = shown > 0 || !rows().length;
    count.textContent = q ? `${shown} of ${rows().length}` : String(rows().length);
  }

  filter.addEventListener("input", () => {
    applyFilter();
    const url = new URL(location.href);
    if (filter.value.trim()) url.searchParams.set("q", filter.value.trim());
    else url.searchParams.delete("q");
    history.replaceState(null, "", url);
  });

  // -- delete ----------------------------------------------------------------------------------------
  function disarm(button) {
    clearTimeout(button._disarm);
    button.classList.remove("is-armed");
    button.textContent = "Delete";
  }

  async function remove(button) {
    const tr = button.closest("tr");
    const what = `${tr.dataset.botId} · ${tr.dataset.name}`;
    button.disabled = true;
    button.textContent = "Deleting…";
    let res;
    try {
      res = await fetch(button.dataset.delete, { method: "DELETE", headers: { Accept: "application/json" } });
    } catch (e) {
      say("error", `Could not reach the relay to delete ${what}: ${e.message}`);
      button.disabled = false;
      disarm(button);
      return;
    }
    const text = (await res.text().catch(() => "")).trim();
    if (res.ok || res.status === 404) {
      // 404: someone (or retention) deleted it first; either way it is gone
      const current = rows().find((r) => r.dataset.botId === tr.dataset.botId && r.dataset.name === tr.dataset.name);
      (current || tr).remove();
      applyFilter();
      say("ok", res.ok ? `Deleted ${what}.` : `${what} was already deleted.`);
      return;
    }
    button.disabled = false;
    disarm(button);
    if (res.status === 409) {
      say("warn", `${what} is still being recorded: it can be deleted once its stream ends.`);
    } else if (res.status === 401) {
      say("error", "Deleting recordings needs the admin password. ",
        link("Sign in as admin", `/login?next=${encodeURIComponent(location.pathname + location.search)}`), ".");
    } else if (res.status === 403) {
      say("error", `Not allowed to delete ${what}: ${text || "forbidden"}.`);
    } else {
      say("error", `Could not delete ${what} (HTTP ${res.status})${text ? `: ${text}` : "."}`);
    }
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-delete]");
    if (!button || button.disabled) return;
    if (!button.classList.contains("is-armed")) { // first click: ask to confirm, without a modal dialog
      for (const other of document.querySelectorAll("button[data-delete].is-armed")) disarm(other);
      button.classList.add("is-armed");
      button.textContent = "Confirm delete";
      button._disarm = setTimeout(() => disarm(button), CONFIRM_MS);
      return;
    }
    clearTimeout(button._disarm);
    remove(button);
  });

  // -- refresh ---------------------------------------------------------------------------------------
  function busy() {
    return Boolean(document.querySelector("button[data-delete].is-armed, button[data-delete]:disabled"));
  }

  async function refresh() {
    if (document.visibilityState === "visible" && !busy()) {
      try {
        const res = await fetch(location.pathname, { cache: "no-store", headers: { Accept: "text/html" } });
        if (res.ok && !busy()) {
          const doc = new DOMParser().parseFromString(await res.text(), "text/html");
          const fresh = doc.getElementById("rec-list");
          if (fresh) $("rec-list").replaceWith(document.importNode(fresh, true));
          filter.hidden = !rows().length;
          applyFilter();
        }
      } catch (e) { /* next time */ }
    }
    const writing = rows().some((tr) => tr.dataset.state === "recording");
    setTimeout(refresh, writing ? REFRESH_LIVE_MS : REFRESH_MS);
  }

  applyFilter();
  setTimeout(refresh, rows().some((tr) => tr.dataset.state === "recording") ? REFRESH_LIVE_MS : REFRESH_MS);
})();
