// Neural Parts reports: sortable tables, the preview slider and the plots' hover read-out. No library.
(function () {
  "use strict";

  // ---- tables: click a header to sort by it (numbers by data-sort, text otherwise); click again to reverse ----
  function sortKey(td) {
    const v = td.dataset.sort;
    return v === undefined ? td.textContent.trim().toLowerCase() : Number(v);
  }
  for (const table of document.querySelectorAll("table.np-sortable")) {
    const heads = table.tHead.rows[0].cells;
    for (const th of heads) {
      th.addEventListener("click", () => {
        const column = th.cellIndex, descending = th.classList.contains("np-asc");
        for (const h of heads) h.classList.remove("np-asc", "np-desc");
        th.classList.add(descending ? "np-desc" : "np-asc");
        const body = table.tBodies[0], rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = sortKey(a.cells[column]), y = sortKey(b.cells[column]);
          const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return descending ? -order : order;
        });
        body.append(...rows);
      });
    }
  }

  // ---- validation previews: a slider over the PNGs written at each validation ----
  for (const box of document.querySelectorAll(".np-previews")) {
    const frames = JSON.parse(box.dataset.frames), slider = box.querySelector("input[type=range]");
    const img = box.querySelector("img"), label = box.querySelector(".np-frame-label");
    function show(k) {
      const f = frames[k];
      img.src = f.src;
      label.textContent = "step " + f.step.toLocaleString("en") + (f.iou === null ? "" : " · validation IoU " +
        f.iou.toFixed(4)) + "  (" + (k + 1) + " of " + frames.length + ")";
    }
    slider.addEventListener("input", () => show(Number(slider.value)));
    show(Number(slider.value));
  }

  // ---- plots: a vertical cursor with the nearest value of every series ----
  for (const svg of document.querySelectorAll("svg.np-plot:not(.np-bars):not(.np-empty)")) {
    const [left, top, right, bottom] = svg.dataset.box.split(" ").map(Number);
    const [x0, x1] = svg.dataset.x.split(" ").map(Number);
    const series = Array.from(svg.querySelectorAll("path.np-series")).map((p) => ({
      name: p.dataset.name, colour: p.getAttribute("stroke"), values: JSON.parse(p.dataset.values) }));
    const cursor = document.createElementNS("http://www.w3.org/2000/svg", "line");
    cursor.setAttribute("class", "np-cursor");
    cursor.setAttribute("y1", top); cursor.setAttribute("y2", bottom);
    cursor.style.display = "none";
    svg.append(cursor);
    const readout = document.createElement("div");
    readout.className = "np-readout"; readout.hidden = true;
    svg.parentNode.append(readout);
    svg.addEventListener("mousemove", (e) => {
      const rect = svg.getBoundingClientRect(), scale = svg.viewBox.baseVal.width / rect.width;
      const sx = (e.clientX - rect.left) * scale;
      if (sx < left || sx > right) { cursor.style.display = "none"; readout.hidden = true; return; }
      const x = x0 + (sx - left) / (right - left) * (x1 - x0);
      const lines = [];
      let at = null;
      for (const s of series) {
        let best = null;
        for (const v of s.values) if (best === null || Math.abs(v[0] - x) < Math.abs(best[0] - x)) best = v;
        if (best === null) continue;
        at = at === null ? best[0] : at;
        lines.push('<b style="background:' + s.colour + '"></b>' + s.name + ": " + Number(best[1]).toPrecision(4) +
          " <small>(step " + best[0] + ")</small>");
      }
      const cx = left + ((at === null ? x : at) - x0) / (x1 - x0) * (right - left);
      cursor.setAttribute("x1", cx); cursor.setAttribute("x2", cx);
      cursor.style.display = "";
      readout.innerHTML = lines.join("<br>");
      readout.hidden = false;
      readout.style.left = (e.clientX - svg.parentNode.getBoundingClientRect().left + 14) + "px";
      readout.style.top = (e.clientY - svg.parentNode.getBoundingClientRect().top + 8) + "px";
    });
    svg.addEventListener("mouseleave", () => { cursor.style.display = "none"; readout.hidden = true; });
  }
  document.body.dataset.ready = "1";
})();
