// The reward plot: one SVG point per predicted frame (t = 1, 2, ...), a line through them, the range at the left.

const SVG = "http://www.w3.org/2000/svg";
const H = 160, LEFT = 44, RIGHT = 8, TOP = 10, BOTTOM = 20;

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

export function drawRewards(svg, rewards) {
  const W = Math.max(svg.clientWidth, 200); // drawn at its on-screen size: round points at any width
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const known = rewards.map((r, i) => [i + 1, r]).filter(([, r]) => r !== null && r !== undefined);
  svg.append(el("line", { class: "axis", x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM }));
  svg.append(el("line", { class: "axis", x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM }));
  if (!known.length) {
    const text = rewards.length ? "the model has no reward head" : "rewards appear here as you step";
    svg.append(el("text", { x: LEFT + 8, y: H / 2 }, text));
    return;
  }
  let lo = Math.min(...known.map(([, r]) => r)), hi = Math.max(...known.map(([, r]) => r));
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const n = Math.max(rewards.length, 2);
  const x = (t) => LEFT + ((t - 1) / (n - 1)) * (W - LEFT - RIGHT);
  const y = (r) => H - BOTTOM - ((r - lo) / (hi - lo)) * (H - TOP - BOTTOM);
  svg.append(el("text", { x: 2, y: TOP + 8 }, hi.toFixed(2)));
  svg.append(el("text", { x: 2, y: H - BOTTOM }, lo.toFixed(2)));
  svg.append(el("text", { x: LEFT, y: H - 4 }, "t=1"));
  svg.append(el("text", { x: W - RIGHT - 40, y: H - 4 }, `t=${rewards.length}`));
  svg.append(el("polyline", { class: "line", points: known.map(([t, r]) => `${x(t)},${y(r)}`).join(" ") }));
  for (const [t, r] of known) {
    const point = el("circle", { class: "point", cx: x(t), cy: y(r), r: 3, "data-t": t, "data-reward": r });
    point.append(el("title", {}, `t=${t} reward ${r.toFixed(3)}`));
    svg.append(point);
  }
}
