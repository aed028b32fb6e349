// Driving inputs -> actions inside the model's action bounds: one slider per action dimension,
// the keyboard (arrows / WASD x-y, Q/E or F/R z, space the gripper) and a gamepad (Gamepad API).

const NAMES = ["x", "y", "z", "gripper"]; // Meta-World's end-effector deltas and gripper
const KEYS = {
  arrowright: [0, 1], d: [0, 1], arrowleft: [0, -1], a: [0, -1],
  arrowup: [1, 1], w: [1, 1], arrowdown: [1, -1], s: [1, -1],
  e: [2, 1], r: [2, 1], q: [2, -1], f: [2, -1],
};
const DEADZONE = 0.2;

export class Controls {
  // bounds: {low: [dim], high: [dim]}
  constructor(container, bounds) {
    this.low = bounds.low;
    this.high = bounds.high;
    this.dim = bounds.low.length;
    this.grip = this.dim >= 4 ? 3 : null; // the gripper: a state that space toggles, not a motion
    this.gripClosed = false;
    this.gamepadButton = false;
    this.inputs = [];
    container.replaceChildren();
    for (let i = 0; i < this.dim; i++) {
      const row = document.createElement("label");
      row.className = "slider";
      const step = (this.high[i] - this.low[i]) / 100;
      row.innerHTML = `<span>${NAMES[i] ?? `a${i}`}</span><input type="range" data-dim="${i}"><output></output>
        <span class="bounds"><span>${fmt(this.low[i])}</span><span>${fmt(this.high[i])}</span></span>`;
      const input = row.querySelector("input");
      Object.assign(input, { min: this.low[i], max: this.high[i], step, value: this.rest(i) });
      input.addEventListener("input", () => this.show(i));
      this.inputs.push(input);
      container.append(row);
      this.show(i);
    }
  }

  rest(i) { // the action of "do nothing" on dimension i (0 when inside the bounds)
    return i === this.grip ? this.gripValue() : Math.min(Math.max(0, this.low[i]), this.high[i]);
  }

  gripValue() { return this.gripClosed ? this.high[this.grip] : this.low[this.grip]; }

  show(i) { this.inputs[i].nextElementSibling.value = fmt(Number(this.inputs[i].value)); }

  values() { return this.inputs.map((input) => Number(input.value)); }

  set(action) {
    action.forEach((v, i) => { this.inputs[i].value = v; this.show(i); });
  }

  // A motion along one dimension (sign +1 / -1, magnitude 0..1 of the bound), the rest still, the gripper held.
  motion(dimension, amount) {
    const action = Array.from({ length: this.dim }, (_, i) => this.rest(i));
    if (dimension !== null && dimension < this.dim && dimension !== this.grip) {
      action[dimension] = amount >= 0 ? amount * this.high[dimension] : -amount * this.low[dimension];
    }
    return action;
  }

  // The action of a keydown, or null for keys that do not drive.
  fromKey(event) {
    if (event.key === " ") {
      if (this.grip === null) return null;
      this.gripClosed = !this.gripClosed;
      return this.motion(null, 0);
    }
    const hit = KEYS[event.key.toLowerCase()];
    return hit ? this.motion(hit[0], hit[1]) : null;
  }

  // The first gamepad's action: left stick x-y, right stick (vertical) z, button A toggles the gripper.
  // null while it rests; {name} tells whether one is connected.
  fromGamepad() {
    const pad = [...(navigator.getGamepads?.() ?? [])].find((p) => p && p.connected);
    if (!pad) return { name: null, action: null };
    const pressed = Boolean(pad.buttons[0]?.pressed);
    const toggled = pressed && !this.gamepadButton;
    this.gamepadButton = pressed;
    if (toggled && this.grip !== null) this.gripClosed = !this.gripClosed;
    const sticks = [pad.axes[0] ?? 0, -(pad.axes[1] ?? 0), -(pad.axes[3] ?? 0)];
    const moving = sticks.some((v) => Math.abs(v) > DEADZONE);
    if (!moving && !toggled) return { name: pad.id, action: null };
    const action = this.motion(null, 0);
    sticks.forEach((v, i) => {
      if (i < this.dim && i !== this.grip && Math.abs(v) > DEADZONE) action[i] = v >= 0 ? v * this.high[i] : -v * this.low[i];
    });
    return { name: pad.id, action };
  }
}

export function fmt(v) { return (Math.round(v * 100) / 100).toFixed(2); }

// The model's action bounds from /v1/models when it has them (action_low / action_high, per dimension or
// one number), else [-1, 1] (what the shipped Meta-World model was trained on).
export function actionBounds(model) {
  const dim = model.action_dim;
  const per = (value, fallback) => {
    if (Array.isArray(value) && value.length === dim) return value.map(Number);
    if (typeof value === "number") return Array(dim).fill(value);
    return Array(dim).fill(fallback);
  };
  return { low: per(model.action_low, -1), high: per(model.action_high, 1) };
}
