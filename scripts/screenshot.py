"""Make the documentation screenshot docs/images/napari-emssl.png with a real napari window.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/screenshot.py [--steps 150]

Opens napari, loads the sample data (File > Open Sample > EM SSL), docks the Fine-tune and
Apply widgets, fine-tunes the default network for a short run from the painted strokes,
applies it to the stack and saves the whole window: widgets, loss plot and the prediction
on a slice that has no strokes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_until(done, timeout: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"not done after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps (default 150)")
    parser.add_argument("--slice", type=int, default=2, help="z slice shown (default 2, an unpainted one)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "napari-emssl.png"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for each run")
    args = parser.parse_args()

    import napari

    viewer = napari.Viewer(title="napari-emssl", show=True)
    viewer.window.resize(1680, 1050)
    viewer.open_sample("napari-emssl", "sstem_crop")
    image = viewer.layers["sstem_crop"]
    _, finetune = viewer.window.add_plugin_dock_widget("napari-emssl", "Fine-tune")
    _, apply = viewer.window.add_plugin_dock_widget("napari-emssl", "Apply")
    viewer.dims.set_point(0, image.data_to_world((args.slice, 0, 0))[0])

    finetune.steps_spin.setValue(args.steps)
    finetune.preview_spin.setValue(15.0)
    started = time.monotonic()
    if not finetune.start():
        raise SystemExit(f"fine-tuning did not start: {finetune.controls.status.text()}")
    wait_until(lambda: not finetune.bridge.running, args.timeout)
    print(f"fine-tuned in {time.monotonic() - started:.0f} s: {finetune.controls.status.text()}")
    if finetune.trained_model is None:
        raise SystemExit("no model was trained")
    if not apply.start():
        raise SystemExit(f"apply did not start: {apply.controls.status.text()}")
    wait_until(lambda: not apply.bridge.running, args.timeout)
    print(f"applied: {apply.controls.status.text()}")

    viewer.layers["sstem_crop preview"].visible = False
    viewer.layers.selection.active = viewer.layers["sstem_crop segmentation"]
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    (overlays.scale_bar if overlays is not None else viewer.scale_bar).visible = True
    viewer.reset_view()
    settle = time.monotonic() + 1.0  # let the canvas and the docks settle
    wait_until(lambda: time.monotonic() > settle, 5.0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}")
    viewer.close()


if __name__ == "__main__":
    main()
