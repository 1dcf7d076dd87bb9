"""PMG-AFT Studio's UI: the Gradio app that `app.py` (the entry point) assembles from these rooms.

Layers, each importing only those below it and pmg_core (which never imports this package):

- `tab_*.py`: one builder per tab; each creates its components, wires its own events next to them and
  returns a small dataclass of the components other tabs need.
- `one_image.py`, `evaluation.py`, `training.py`: the handlers, plain functions of the app's state and
  the raw values people typed; each checks them (pmg_core.data.inputs) and makes one call into pmg_core.
- `state.py` (the loaded models), `jobs.py` (running Evaluate/Train runs), `html.py` (the verdict
  table), `safety.py` (errors as one sentence, ZeroGPU, queue lanes, uploads), `assets.py` (files
  read at start).
"""
