// udrl eval report: sort the per-query table by a change column; list the queries a mode hurt
// most. Inlined into report.html by plugin/report_html.py.
(function () {
  "use strict";
  const table = document.getElementById("queries");
  if (!table) return;
  const tbody = table.tBodies[0];
  const rows = Array.from(tbody.rows);
  const controls = document.querySelector(".controls");
  const top = controls ? Number(controls.dataset.top) : 10;
  const shown = document.getElementById("shown");
  const sorted = { key: "order", dir: 1 };

  const value = (row, key) => Number(row.dataset[key]);

  function sortBy(key, dir) {
    sorted.key = key;
    sorted.dir = dir;
    const order = rows.slice().sort((a, b) =>
      (value(a, key) - value(b, key)) * dir || value(a, "order") - value(b, "order"));
    tbody.replaceChildren(...order);
    for (const button of table.querySelectorAll("button.sort")) {
      const th = button.parentElement;
      if (button.dataset.key === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    return order;
  }

  function showAll() {
    for (const row of rows) row.hidden = false;
    if (shown) shown.textContent = `${rows.length} queries`;
  }

  for (const button of table.querySelectorAll("button.sort")) {
    button.addEventListener("click", () => {
      const key = button.dataset.key;
      showAll();
      // first click: ascending (for a change column, the most hurt query first)
      sortBy(key, sorted.key === key ? -sorted.dir : 1);
    });
  }
  for (const button of document.querySelectorAll("button.hurt")) {
    button.addEventListener("click", () => {
      const order = sortBy(button.dataset.key, 1);
      const hurt = order.filter((row) => value(row, button.dataset.key) < 0).slice(0, top);
      for (const row of rows) row.hidden = !hurt.includes(row);
      if (shown) {
        shown.textContent = `${hurt.length} queries ${button.dataset.mode} hurt most` +
          ` (of ${order.filter((row) => value(row, button.dataset.key) < 0).length} hurt)`;
      }
      table.scrollIntoView();
    });
  }
  const all = document.querySelector("button.all");
  if (all) {
    all.addEventListener("click", () => { showAll(); sortBy("order", 1); table.scrollIntoView(); });
  }
  showAll();
})();
