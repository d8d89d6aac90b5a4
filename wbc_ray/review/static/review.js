// wbc-ray review: keyboard and click review of one sample; no framework, no build step.
(function () {
  "use strict";
  const token = document.querySelector('meta[name="review-token"]').content;
  const reviewer = document.getElementById("reviewer");
  reviewer.value = localStorage.getItem("wbc-reviewer") || "";
  reviewer.addEventListener("input", () => localStorage.setItem("wbc-reviewer", reviewer.value.trim()));

  function toast(text, bad) {
    const t = document.getElementById("toast");
    t.textContent = text;
    t.className = bad ? "show bad" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, bad ? 6000 : 1500);
  }

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Review-Token": token},
      body: JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({error: r.statusText}));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  const sample = document.getElementById("sample");
  if (!sample) return;
  const sampleId = sample.dataset.sample;
  const classes = sample.dataset.classes.split(",");
  const cells = Array.from(document.querySelectorAll("figure.cell"));
  let current = 0;
  let busy = Promise.resolve();

  // crypto.getRandomValues works over plain http too (randomUUID needs a secure context).
  function eventId() {
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, "0")).join("");
  }
  function title(s) { return s.charAt(0) + s.slice(1).toLowerCase(); }
  function fmt(v) { return v === null || v === undefined ? "" : v.toFixed(1); }

  function select(i, focus) {
    if (!cells.length) return;
    current = Math.max(0, Math.min(cells.length - 1, i));
    cells.forEach((c, j) => c.classList.toggle("selected", j === current));
    if (focus !== false) cells[current].focus({preventScroll: false});
  }

  function render(live) {
    sample.dataset.events = live.events;
    for (const d of live.differential) {
      const row = document.querySelector(`#differential tr[data-class="${d.class}"]`);
      row.querySelector(".count").textContent = d.count;
      row.querySelector(".pct").textContent = fmt(d.pct);
      row.querySelector(".ci").textContent = fmt(d.ci_low) + "\u2013" + fmt(d.ci_high);
      row.className = "flag-" + (d.flag || "none");
    }
    for (const id of ["counted", "excluded", "unresolved"]) document.getElementById(id).textContent = live[id];
    document.getElementById("flags").textContent = live.flags || "";
    document.getElementById("refusal").textContent = live.refusal || "";
    const status = document.getElementById("status");
    status.textContent = live.status;
    status.className = "status s-" + live.status.replace(" ", "-");
    document.getElementById("signed-by").textContent = live.signed_by ? "by " + live.signed_by : "";
    document.getElementById("sign").disabled = Boolean(live.refusal) || live.status === "signed";
    for (const fig of cells) {
      const s = live.cells[fig.dataset.cell];
      if (!s) continue;
      fig.querySelector(".label").textContent = title(s.label);
      fig.classList.toggle("reviewed", s.reviewed);
      fig.classList.toggle("excluded", s.excluded);
      fig.classList.toggle("changed", s.label !== fig.dataset.machine);
    }
  }

  function act(action, label) {
    if (!cells.length) return;
    const fig = cells[current];
    if (!reviewer.value.trim()) { toast("Enter your name (top right) before reviewing", true); reviewer.focus(); return; }
    if (action === "confirm") { action = "label"; label = fig.dataset.machine; }
    const body = {sample_id: sampleId, cell_id: fig.dataset.cell, action: action, label: label || null,
                  reviewer: reviewer.value.trim(), event_id: eventId()};
    select(current + 1);
    // One request at a time, in order: the server sees the actions as the reviewer made them.
    busy = busy.then(() => post("/api/act", body).then(render).catch(e => toast(e.message, true)));
  }

  function columns() {
    if (cells.length < 2) return 1;
    const top = cells[current].offsetTop;
    const row = cells.filter(c => c.offsetTop === top && c.parentNode === cells[current].parentNode);
    return Math.max(1, row.length);
  }

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.altKey || e.ctrlKey || e.metaKey) return;
    const n = parseInt(e.key, 10);
    if (n >= 1 && n <= classes.length) { act("label", classes[n - 1]); e.preventDefault(); return; }
    const moves = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()};
    if (e.key in moves) { select(current + moves[e.key]); e.preventDefault(); return; }
    if (e.key === "Enter" || e.key === "c") { act("confirm"); e.preventDefault(); return; }
    if (e.key === "x" || e.key === "Delete") { act("exclude"); e.preventDefault(); }
  });
  cells.forEach((fig, i) => fig.addEventListener("click", (e) => {
    if (e.target.classList.contains("field-link")) return;
    select(i);
  }));
  document.querySelectorAll("#actions button").forEach((b) => b.addEventListener("click", () => {
    if (b.dataset.label) act("label", b.dataset.label); else act(b.dataset.action);
  }));
  document.getElementById("sign").addEventListener("click", () => {
    if (!reviewer.value.trim()) { toast("Enter your name (top right) before signing", true); reviewer.focus(); return; }
    busy = busy.then(() => post("/api/sign", {sample_id: sampleId, reviewer: reviewer.value.trim(),
                                               seen_events: parseInt(sample.dataset.events, 10)})
      .then((live) => { render(live); toast("Signed"); })
      .catch(e => toast(e.message, true)));
  });
  select(0, false);
})();
