"""What the page does in the browser: the style of the results and of the error line, and the script
of the results (a token's chip shows its map; Enter in a slider's number box reruns). Gradio scopes
each `css_template` to its component (`#id { ... }`, native CSS nesting: `&` is the component); a
template is read as a JavaScript template string, so no backslash or `${` may appear in one."""

RESULTS_CSS = """
[hidden] { display: none !important; }
.refam-results { display: flex; flex-direction: column; gap: 12px; }
.refam-compare { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; align-items: start; }
.refam-settings { display: flex; flex-wrap: wrap; gap: 2px 12px; align-items: baseline; padding: 6px 10px;
  border: 1px solid var(--border-color-primary); border-radius: 8px; background: var(--background-fill-secondary);
  font-size: 13px; }
.refam-settings .refam-title { font-weight: 700; }
.refam-differs b { background: #ffe066; color: #000; padding: 0 3px; border-radius: 3px; }
.refam-summary, .refam-facts, .refam-note, .refam-legend { color: var(--body-text-color-subdued); font-size: 13px; }
.refam-summary { margin-left: auto; }
.refam-note, .refam-legend { margin: 0; }
.refam-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
  background: var(--block-background-fill); }
.refam-card header { display: flex; flex-wrap: wrap; gap: 2px 10px; align-items: baseline; margin-bottom: 8px; }
.refam-number { font-weight: 700; color: var(--color-accent); }
.refam-expression { font-size: 17px; margin: 0; overflow-wrap: anywhere; }
.refam-pictures { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 10px; }
.refam-pictures figure { margin: 0; }
.refam-pictures figcaption { font-size: 13px; margin-top: 4px; }
.refam-frame { position: relative; width: 100%; overflow: hidden; background: #000; }
.refam-base { background: var(--refam-base) center / 100% 100% no-repeat; }
.refam-frame > div, .refam-frame > img, .refam-frame > svg { position: absolute; inset: 0; width: 100%; height: 100%; margin: 0;
  max-width: none; border-radius: 0; }
.refam-enlarged .refam-base, .refam-enlarged .refam-outline, .refam-enlarged .refam-fill { image-rendering: pixelated; }
.refam-fill { display: none; }
:root:has(#refam-fill input:checked) & .refam-fill { display: block; }
.refam-map { opacity: 0.6; }
.refam-star { fill: #ffd700; stroke: #000; stroke-width: 1.5px; vector-effect: non-scaling-stroke; }
.refam-mask-view .refam-frame { cursor: crosshair; }
.refam-point { stroke: #fff; stroke-width: 2px; vector-effect: non-scaling-stroke; }
.refam-positive { fill: #1a9c3c; }
.refam-negative { fill: #d93025; }
.refam-swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #000; margin: 0 3px; }
.refam-scale { display: inline-flex; align-items: center; gap: 4px; }
.refam-bar { display: inline-block; width: 110px; height: 10px; border: 1px solid #000; }
.refam-tokens { display: flex; flex-wrap: wrap; gap: 4px; margin: 8px 0 2px; }
.refam-token { position: relative; font-family: var(--font-mono); font-size: 13px; padding: 2px 7px 6px;
  border: 1px solid var(--border-color-primary); border-radius: 5px; background: var(--background-fill-primary);
  color: var(--body-text-color); cursor: pointer; overflow: hidden; }
.refam-dropped { color: #888 !important; }
.refam-sink { color: #c81e1e !important; border-color: #c81e1e !important; }
.refam-token.refam-on { outline: 2px solid var(--color-accent); outline-offset: 1px; }
.refam-mass { position: absolute; left: 0; bottom: 0; height: 3px; background: steelblue; }
.refam-sink .refam-mass { background: #c81e1e; }
.refam-warnings, .refam-no-referent { margin: 0 0 8px; padding: 4px 10px; border-radius: 6px; background: #fff4d6;
  color: #7a4b00; font-size: 13px; }
.refam-warnings { padding-left: 26px; }
.refam-no-referent { border-left: 5px solid #e8a400; }
"""

RESULTS_JS = """
// a token's chip shows that token's map over the image: every map is in the card, so nothing is asked of the server
element.addEventListener('click', (event) => {
  const chip = event.target.closest('.refam-token');
  if (!chip) return;
  for (const node of chip.closest('.refam-card').querySelectorAll('[data-layer]')) {
    if (node.classList.contains('refam-token')) node.classList.toggle('refam-on', node === chip);
    else node.hidden = node.dataset.layer !== chip.dataset.layer;
  }
});
// a click on a mask's picture: a correction point there, in the image's pixels (the marks' viewBox);
// shift or the "negative point" toggle: "not this"
element.addEventListener('click', (event) => {
  const frame = event.target.closest('.refam-mask-view .refam-frame');
  if (!frame || frame.closest('.refam-compare')) return;
  const box = frame.getBoundingClientRect(), view = frame.querySelector('.refam-marks').viewBox.baseVal;
  const toggle = document.querySelector('#refam-negative input');
  trigger('select', {expression: Number(frame.closest('.refam-card').dataset.expression),
                     x: (event.clientX - box.left) / box.width * view.width,
                     y: (event.clientY - box.top) / box.height * view.height,
                     negative: event.shiftKey || Boolean(toggle && toggle.checked)});
});
// Enter in a slider's number box reruns as leaving the box does: Gradio sends the slider's release on blur
if (!window.refamEnterReruns) {
  window.refamEnterReruns = true;
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && event.target.matches('.refam-rerun input[type=number]')) event.target.blur();
  });
}
"""

STATUS_CSS = """
.refam-error { margin: 0; padding: 6px 10px; border: 1px solid #d93025; border-left-width: 5px; border-radius: 6px;
  background: #fdecea; color: #8c1d18; font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.refam-error::before { content: "⚠ "; }
"""
