// Keyboard shortcuts for the review page: c = confirm, o = overturn, n = next meme in the queue, u = undo your last decision.
// Served as a file (never inline) so the Content-Security-Policy can forbid inline scripts.
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
  const item = document.getElementById("item");
  const click = (id) => { const b = document.getElementById(id); if (b) b.click(); };
  if (event.key === "c") click("confirm");
  else if (event.key === "o") click("overturn");
  else if (event.key === "u") click("undo");
  else if (event.key === "n" && item && item.dataset.next) window.location.assign(item.dataset.next);
});
