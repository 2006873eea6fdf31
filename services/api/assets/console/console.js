// Coursewire Console: the little the pages do in the browser. Everything works without it;
// it adds copy buttons and live updates of the deliveries list. No inline script anywhere
// (the Content-Security-Policy forbids it): this file is the only one.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  if (!field) return;
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
    button.textContent = "Copied";
  } catch {
    // Clipboard access denied (e.g. not a secure context): the text is selected; copy by hand.
    button.textContent = "Selected: press Ctrl+C";
  }
});

// A table body with data-live is refreshed from that URL every few seconds while the page is
// visible, so new deliveries appear without reloading.
const live = document.querySelector("tbody[data-live]");
if (live) {
  const status = document.getElementById("live");
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(live.dataset.live, { credentials: "same-origin", headers: { accept: "text/html" } });
      if (response.redirected || !response.ok) return;
      const html = await response.text();
      if (html !== live.innerHTML) {
        const before = live.rows.length;
        live.innerHTML = html;
        if (status && live.rows.length !== before) status.textContent = `Updated: ${live.rows.length} deliveries shown.`;
      }
    } catch {
      // Offline for a moment: try again at the next tick.
    }
  };
  setInterval(refresh, 3000);
}
