// Neural Parts viewer: plain WebGL (1 or 2), no library. Reads the JSON in #np-data (see neural_parts/viewer).
// Shading: the palette colour (the PNG previews') x min(1, 0.3 + 0.55 max(0, n.l) + 0.25 max(0, n.v)): a key light
// from the viewer's upper left, as in the previews, plus a head light; two-sided (normals turned towards the
// viewer); a shade of the colour, never another hue. Renders on demand, not in a loop.
(function () {
  "use strict";

  const FOV = 40 * Math.PI / 180; // vertical field of view of the previews' orbit cameras
  const START = { azimuth: 30, elevation: 20 }; // data.render.FIXED_VIEW, degrees
  const LIGHT = normalise([-0.45, 0.65, 0.6]); // towards the light, camera frame (x right, y up, z to the viewer)
  const BACKGROUND = [0.969, 0.973, 0.98];
  const TARGET_RGB = [0.55, 0.58, 0.64];
  const POINT_PIXELS = 2.5; // a target point's diameter at the starting distance, CSS pixels

  const data = JSON.parse(document.getElementById("np-data").textContent);
  const canvas = document.getElementById("np-canvas");
  const tip = document.getElementById("np-tip");
  const state = { hover: -1, showTarget: false, dirty: true, pickDirty: true, camera: null, frames: 0 };

  // ---- small vector / matrix helpers (column-major 4x4, like GL) ----
  function normalise(v) { const n = Math.hypot(v[0], v[1], v[2]) || 1; return [v[0] / n, v[1] / n, v[2] / n]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
  function lookAt(eye, at, up) {
    const z = normalise(sub(eye, at)), x = normalise(cross(up, z)), y = cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
  }
  function perspective(fov, aspect, near, far) {
    const f = 1 / Math.tan(fov / 2), r = 1 / (near - far);
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * r, -1, 0, 0, 2 * far * near * r, 0]);
  }
  function upper3(m) { return new Float32Array([m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]]); }

  function decode(b64, Type) {
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Type(bytes.buffer); // the Python side writes little-endian arrays
  }

  // ---- geometry: dequantise positions, smooth normals ----
  const [lo, hi] = data.scene.box, extent = [0, 1, 2].map((a) => hi[a] - lo[a]);
  function positions(b64) {
    const q = decode(b64, Uint16Array), out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) out[i] = lo[i % 3] + (q[i] / 65535) * extent[i % 3];
    return out;
  }
  function vertexNormals(pos, idx) {
    const n = new Float32Array(pos.length);
    for (let t = 0; t < idx.length; t += 3) {
      const a = 3 * idx[t], b = 3 * idx[t + 1], c = 3 * idx[t + 2];
      const u = [pos[b] - pos[a], pos[b + 1] - pos[a + 1], pos[b + 2] - pos[a + 2]];
      const v = [pos[c] - pos[a], pos[c + 1] - pos[a + 1], pos[c + 2] - pos[a + 2]];
      const f = cross(u, v); // area-weighted
      for (const k of [a, b, c]) { n[k] += f[0]; n[k + 1] += f[1]; n[k + 2] += f[2]; }
    }
    for (let i = 0; i < n.length; i += 3) {
      const l = Math.hypot(n[i], n[i + 1], n[i + 2]) || 1;
      n[i] /= l; n[i + 1] /= l; n[i + 2] /= l;
    }
    return n;
  }

  // ---- GL setup ----
  const gl = canvas.getContext("webgl2", { antialias: true }) || canvas.getContext("webgl", { antialias: true });
  if (!gl) { fail("WebGL is not available in this browser."); return; }
  const webgl2 = typeof WebGL2RenderingContext !== "undefined" && gl instanceof WebGL2RenderingContext;
  if (!webgl2 && !gl.getExtension("OES_element_index_uint") &&
      [...data.scene.parts, data.scene.target || {}].some((m) => m.index_type === "uint32")) {
    fail("This browser's WebGL lacks 32-bit indices (OES_element_index_uint).");
    return;
  }

  const VERTEX = `
    attribute vec3 aPos; attribute vec3 aNormal;
    uniform mat4 uView, uProj; uniform mat3 uNormalMatrix; uniform float uPointSize;
    varying vec3 vNormal; varying vec3 vViewPos;
    void main() {
      vec4 p = uView * vec4(aPos, 1.0);
      vViewPos = p.xyz; vNormal = uNormalMatrix * aNormal;
      gl_Position = uProj * p; gl_PointSize = uPointSize;
    }`;
  const FRAGMENT = `
    precision mediump float;
    uniform vec3 uColor, uLight, uMixColor; uniform float uMix, uAlpha; uniform int uMode; // 0 shaded, 1 id, 2 points
    uniform int uHasNormals;
    varying vec3 vNormal; varying vec3 vViewPos;
    void main() {
      if (uMode == 1) { gl_FragColor = vec4(uColor, 1.0); return; }
      if (uMode == 2) { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; }
      float shade = 0.85;
      if (uHasNormals == 1) {
        vec3 n = normalize(vNormal);
        vec3 toEye = normalize(-vViewPos);
        if (dot(n, toEye) < 0.0) n = -n; // two-sided: face the viewer
        shade = min(1.0, 0.3 + 0.55 * max(dot(n, uLight), 0.0) + 0.25 * max(dot(n, toEye), 0.0));
      }
      gl_FragColor = vec4(mix(uColor, uMixColor, uMix) * shade, uAlpha);
    }`;
  function compile(type, source) {
    const s = gl.createShader(type);
    gl.shaderSource(s, source);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(s));
    return s;
  }
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error("program: " + gl.getProgramInfoLog(program));
  gl.useProgram(program);
  const loc = {};
  for (const name of ["uView", "uProj", "uNormalMatrix", "uPointSize", "uColor", "uLight", "uMixColor", "uMix",
    "uAlpha", "uMode", "uHasNormals"]) loc[name] = gl.getUniformLocation(program, name);
  const aPos = gl.getAttribLocation(program, "aPos"), aNormal = gl.getAttribLocation(program, "aNormal");

  function arrayBuffer(target, array) {
    const b = gl.createBuffer();
    gl.bindBuffer(target, b);
    gl.bufferData(target, array, gl.STATIC_DRAW);
    return b;
  }
  const indexCache = new Map();
  function meshBuffers(entry) {
    const pos = positions(entry.positions);
    if (!indexCache.has(entry.indices)) {
      indexCache.set(entry.indices, decode(data.scene.indices[entry.indices],
        entry.index_type === "uint32" ? Uint32Array : Uint16Array));
    }
    const idx = indexCache.get(entry.indices);
    return { pos: arrayBuffer(gl.ARRAY_BUFFER, pos), normal: arrayBuffer(gl.ARRAY_BUFFER, vertexNormals(pos, idx)),
      index: arrayBuffer(gl.ELEMENT_ARRAY_BUFFER, idx), count: idx.length,
      type: entry.index_type === "uint32" ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT };
  }
  const parts = data.scene.parts.map((p, k) => ({ ...meshBuffers(p), k, name: p.name, rgb: p.colour.map((c) => c / 255),
    visible: true, nVertices: p.n_vertices }));
  let target = null;
  const t = data.scene.target;
  if (t && t.kind === "mesh") target = { kind: "mesh", ...meshBuffers(t) };
  if (t && t.kind === "points") {
    const normals = t.normals ? Float32Array.from(decode(t.normals, Int8Array), (v) => v / 127) : null;
    target = { kind: "points", pos: arrayBuffer(gl.ARRAY_BUFFER, positions(t.positions)), count: t.n_points,
      normal: normals ? arrayBuffer(gl.ARRAY_BUFFER, normals) : null };
  }

  // ---- camera: orbit around a centre, framing the scene like data.render.orbit_camera ----
  const longest = Math.max(...extent, 1e-6), centre = [0, 1, 2].map((a) => lo[a] + extent[a] / 2);
  function homeCamera() {
    return { azimuth: START.azimuth, elevation: START.elevation, centre: centre.slice(),
      distance: 0.5 * longest / Math.tan(FOV / 2) + 0.5 * longest };
  }
  state.camera = homeCamera();
  function eyeOf(c) {
    const az = c.azimuth * Math.PI / 180, el = c.elevation * Math.PI / 180;
    return [c.centre[0] + c.distance * Math.cos(el) * Math.sin(az), c.centre[1] + c.distance * Math.sin(el),
      c.centre[2] + c.distance * Math.cos(el) * Math.cos(az)];
  }
  function matrices() {
    const c = state.camera, view = lookAt(eyeOf(c), c.centre, [0, 1, 0]);
    const proj = perspective(FOV, canvas.width / Math.max(canvas.height, 1), c.distance * 0.02, c.distance + 4 * longest);
    return { view, proj };
  }

  // ---- drawing ----
  function bind(m) {
    gl.bindBuffer(gl.ARRAY_BUFFER, m.pos);
    gl.enableVertexAttribArray(aPos);
    gl.vertexAttribPointer(aPos, 3, gl.FLOAT, false, 0, 0);
    if (m.normal) {
      gl.bindBuffer(gl.ARRAY_BUFFER, m.normal);
      gl.enableVertexAttribArray(aNormal);
      gl.vertexAttribPointer(aNormal, 3, gl.FLOAT, false, 0, 0);
    } else {
      gl.disableVertexAttribArray(aNormal);
      gl.vertexAttrib3f(aNormal, 0, 0, 1);
    }
    gl.uniform1i(loc.uHasNormals, m.normal ? 1 : 0);
  }
  function drawElements(m) {
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, m.index);
    gl.drawElements(gl.TRIANGLES, m.count, m.type, 0);
  }
  function setCommon(mode) {
    const { view, proj } = matrices();
    gl.uniformMatrix4fv(loc.uView, false, view);
    gl.uniformMatrix4fv(loc.uProj, false, proj);
    gl.uniformMatrix3fv(loc.uNormalMatrix, false, upper3(view));
    gl.uniform3fv(loc.uLight, LIGHT);
    gl.uniform1i(loc.uMode, mode);
    gl.uniform1f(loc.uMix, 0);
    gl.uniform1f(loc.uAlpha, 1);
    gl.uniform1f(loc.uPointSize, 1);
  }
  function draw() {
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    gl.disable(gl.BLEND);
    gl.depthMask(true);
    setCommon(0);
    for (const p of parts) {
      if (!p.visible) continue;
      const faded = state.hover >= 0 && state.hover !== p.k;
      gl.uniform3fv(loc.uColor, p.rgb);
      gl.uniform3fv(loc.uMixColor, faded ? [0.86, 0.87, 0.9] : [1, 1, 1]);
      gl.uniform1f(loc.uMix, state.hover === p.k ? 0.12 : faded ? 0.72 : 0);
      bind(p);
      drawElements(p);
    }
    if (target && state.showTarget) {
      gl.uniform3fv(loc.uColor, TARGET_RGB);
      gl.uniform1f(loc.uMix, 0);
      bind(target);
      if (target.kind === "points") {
        gl.uniform1i(loc.uMode, 2);
        const size = Math.max(1.5, POINT_PIXELS * (window.devicePixelRatio || 1) * homeCamera().distance /
          state.camera.distance);
        gl.uniform1f(loc.uPointSize, size);
        gl.drawArrays(gl.POINTS, 0, target.count);
      } else { // translucent over the parts
        gl.enable(gl.BLEND);
        gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
        gl.depthMask(false);
        gl.uniform1f(loc.uAlpha, 0.35);
        drawElements(target);
      }
    }
    state.frames += 1;
  }

  // ---- picking: part ids rendered to an offscreen buffer, read under the cursor ----
  let pick = null;
  function pickBuffer() {
    if (pick && pick.w === canvas.width && pick.h === canvas.height) return pick;
    if (pick) { gl.deleteFramebuffer(pick.fb); gl.deleteTexture(pick.tex); gl.deleteRenderbuffer(pick.depth); }
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, canvas.width, canvas.height, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
    for (const [key, value] of [[gl.TEXTURE_MIN_FILTER, gl.NEAREST], [gl.TEXTURE_MAG_FILTER, gl.NEAREST],
      [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) { // complete in WebGL 1 too
      gl.texParameteri(gl.TEXTURE_2D, key, value);
    }
    const depth = gl.createRenderbuffer();
    gl.bindRenderbuffer(gl.RENDERBUFFER, depth);
    gl.renderbufferStorage(gl.RENDERBUFFER, gl.DEPTH_COMPONENT16, canvas.width, canvas.height);
    const fb = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
    gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.DEPTH_ATTACHMENT, gl.RENDERBUFFER, depth);
    pick = { fb, tex, depth, w: canvas.width, h: canvas.height };
    state.pickDirty = true;
    return pick;
  }
  function partAt(x, y) {
    const buffer = pickBuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, buffer.fb);
    if (state.pickDirty) {
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.clearColor(0, 0, 0, 0);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.enable(gl.DEPTH_TEST);
      gl.disable(gl.BLEND);
      gl.depthMask(true);
      setCommon(1);
      for (const p of parts) {
        if (!p.visible) continue;
        gl.uniform3fv(loc.uColor, [(p.k + 1) / 255, 0, 0]);
        bind(p);
        drawElements(p);
      }
      state.pickDirty = false;
    }
    const pixel = new Uint8Array(4);
    gl.readPixels(x, canvas.height - 1 - y, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    return pixel[3] ? pixel[0] - 1 : -1;
  }

  function redraw(geometryChanged) {
    if (geometryChanged !== false) state.pickDirty = true;
    if (state.dirty) return;
    state.dirty = true;
    requestAnimationFrame(() => { state.dirty = false; draw(); document.body.dataset.frames = String(state.frames); });
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; redraw(); }
  }

  // ---- side panel ----
  function fail(message) {
    const panel = document.getElementById("np-error");
    panel.textContent = message;
    panel.hidden = false;
    console.error("neural_parts viewer: " + message);
  }
  if (data.image) {
    const figure = document.getElementById("np-image");
    figure.querySelector("img").src = data.image;
    figure.hidden = false;
  }
  if (data.metrics.length) {
    const table = document.getElementById("np-metrics");
    for (const [label, value] of data.metrics) {
      const row = table.insertRow();
      row.insertCell().textContent = label;
      row.insertCell().textContent = value;
    }
    table.hidden = false;
  }
  const list = document.getElementById("np-parts"), rows = [];
  for (const p of parts) {
    const li = document.createElement("li"), toggle = document.createElement("input");
    toggle.type = "checkbox"; toggle.checked = true; toggle.id = "np-part-" + p.k;
    const swatch = document.createElement("span");
    swatch.className = "np-swatch";
    swatch.style.background = "rgb(" + p.rgb.map((c) => Math.round(255 * c)).join(",") + ")";
    const name = document.createElement("label");
    name.className = "np-name"; name.htmlFor = toggle.id; name.textContent = p.name;
    const count = document.createElement("span");
    count.className = "np-count"; count.textContent = p.nVertices.toLocaleString("en") + " v";
    li.append(toggle, swatch, name, count);
    li.dataset.part = String(p.k);
    toggle.addEventListener("change", () => setVisible(p.k, toggle.checked));
    li.addEventListener("mouseenter", () => setHover(p.k));
    li.addEventListener("mouseleave", () => setHover(-1));
    li.addEventListener("dblclick", (e) => { e.preventDefault(); solo(p.k); });
    list.append(li);
    rows.push({ li, toggle });
  }
  function setVisible(k, on) {
    parts[k].visible = on;
    rows[k].toggle.checked = on;
    rows[k].li.classList.toggle("np-off", !on);
    redraw();
  }
  function solo(k) { parts.forEach((p) => setVisible(p.k, p.k === k)); }
  function setHover(k) {
    if (state.hover === k) return;
    state.hover = k;
    rows.forEach((r, j) => r.li.classList.toggle("np-hover", j === k));
    redraw(false);
  }
  const targetBox = document.getElementById("np-target");
  if (target) {
    document.getElementById("np-target-row").hidden = false;
    document.getElementById("np-target-label").textContent =
      target.kind === "points" ? "target (" + target.count.toLocaleString("en") + " surface points)" : "target mesh";
    targetBox.addEventListener("change", () => { state.showTarget = targetBox.checked; redraw(false); });
  }
  document.getElementById("np-all").addEventListener("click", () => parts.forEach((p) => setVisible(p.k, true)));
  document.getElementById("np-none").addEventListener("click", () => parts.forEach((p) => setVisible(p.k, false)));
  document.getElementById("np-reset").addEventListener("click", () => { state.camera = homeCamera(); redraw(); });
  document.getElementById("np-png").addEventListener("click", () => {
    draw(); // the drawing buffer is read in the same task as it is drawn
    const a = document.createElement("a");
    a.href = canvas.toDataURL("image/png");
    a.download = (data.title || "parts").replace(/[^\w.-]+/g, "_") + ".png";
    a.click();
  });

  // ---- mouse, touch and keys ----
  let drag = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey || e.button === 1 };
    canvas.setPointerCapture(e.pointerId);
    canvas.classList.add("np-dragging");
    tip.hidden = true;
  });
  canvas.addEventListener("pointerup", (e) => {
    drag = null;
    canvas.releasePointerCapture(e.pointerId);
    canvas.classList.remove("np-dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    const c = state.camera;
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.pan) {
        const { view } = matrices(), scale = 2 * c.distance * Math.tan(FOV / 2) / canvas.clientHeight;
        for (let a = 0; a < 3; a++) c.centre[a] += scale * (-dx * view[4 * a] + dy * view[4 * a + 1]);
      } else {
        c.azimuth -= dx * 0.4;
        c.elevation = Math.max(-89, Math.min(89, c.elevation + dy * 0.4));
      }
      redraw();
      return;
    }
    const rect = canvas.getBoundingClientRect(), dpr = canvas.width / rect.width;
    const k = partAt(Math.floor((e.clientX - rect.left) * dpr), Math.floor((e.clientY - rect.top) * dpr));
    setHover(k);
    tip.hidden = k < 0;
    if (k >= 0) {
      tip.textContent = parts[k].name;
      tip.style.left = (e.clientX - rect.left + 14) + "px";
      tip.style.top = (e.clientY - rect.top + 10) + "px";
    }
  });
  canvas.addEventListener("pointerleave", () => { if (!drag) { setHover(-1); tip.hidden = true; } });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const step = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
    state.camera.distance = Math.max(1e-3 * longest, state.camera.distance * Math.exp(step * 0.0015));
    redraw();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { state.camera = homeCamera(); redraw(); });
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type !== "checkbox") return;
    const k = Number(e.key) - 1;
    if (Number.isInteger(k) && k >= 0 && k < Math.min(9, parts.length)) setVisible(k, !parts[k].visible);
    else if ((e.key === "t" || e.key === "T") && target) { targetBox.click(); }
    else if (e.key === "r" || e.key === "R") { state.camera = homeCamera(); redraw(); }
  });

  new ResizeObserver(resize).observe(canvas);
  resize();
  state.dirty = false;
  draw();
  document.body.dataset.frames = String(state.frames);
  // For scripts and tests: the page's state (its controls are the way to change it).
  window.npViewer = { parts: parts.map((p) => ({ name: p.name, rgb: p.rgb })), target: target && target.kind,
    visible: () => parts.map((p) => p.visible), camera: () => ({ ...state.camera }) };
  document.body.dataset.ready = "1";
})();
