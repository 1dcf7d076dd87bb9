"""The data floor: what images and names go in, from a dataset's name or a person's file.

Holds the dataset registry (`datasets`: a name -> images in [0,1] with class names and prompt
templates), its built-in plug-ins (`synthetic`, the embedded world; `paper_datasets`, the paper's
sets) and their prompts (`paper_prompts`, class_names/), the numerics presets (`presets`: prompt
templates, normalisation, logit scale, KL reduction: what data and models both read), reading
images people give (`images`) and checking what they type (`inputs`). Imports only core/. The
registry and its plug-ins import each other (it loads them lazily): that circle stays on this floor.

`from pmg_core.data.datasets import get_dataset` and every other name of the registry work as they did when
this floor was one module.
"""
from ..core.layout import lend

__getattr__, __dir__ = lend(__name__, "datasets")
