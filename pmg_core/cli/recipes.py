"""Run recipes as files: every TrainConfig / EvalConfig setting in a YAML (or JSON) mapping.

`python -m pmg_core train --config configs/pmg_aft_vitb32.yaml` and `eval --config ...` read them;
flags given on the command line override the file. As on the command line, eps and step sizes are
written in /255 units (``eps: 1`` is 1/255) and converted to the library's pixel units here.
Optional keys: ``kind`` (train | eval: refuses the wrong command) and ``extends`` (a recipe, path
relative to this file, whose settings this one starts from).

A train recipe's ``out`` that is a bare file name (``out: pmg-aft-vitb32.safetensors``) is written
to the checkpoint folder (pmg_core.core.env.checkpoint_dir(): checkpoints/ beside the package, or
$PMG_CHECKPOINT_DIR), where ``eval --models pmg-aft-vitb32`` finds it by name from any working
directory. Any other relative path is relative to the working directory, as ``--out`` always is.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

from ..core.errors import UserError, check, first_line, shorten
from ..core.units import from_255, to_255

KINDS = ("train", "eval")
PER_255 = ("eps", "step_size")  # written in /255 units in recipe files
MAX_RECIPE_BYTES = 100_000
RECIPE_KEYS = ("kind", "extends", "description")  # about the file, not run settings
LIST_FIELDS = ("models", "datasets", "adaptive")  # EvalConfig lists; a comma-separated string is accepted too


def config_class(kind: str):
    check(kind in KINDS, f"Recipe kind must be 'train' or 'eval'; got {kind!r}.")
    if kind == "train":
        from ..training.loop import TrainConfig

        return TrainConfig
    from ..evaluation.accuracy import EvalConfig

    return EvalConfig


def _read_mapping(path: Path) -> dict:
    check(path.is_file(), f"Recipe file '{path}' does not exist.")
    check(path.stat().st_size <= MAX_RECIPE_BYTES, f"Recipe '{path.name}' is over {MAX_RECIPE_BYTES // 1000} kB; "
                                                   "a recipe is a short list of settings.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"Recipe '{path.name}' is not UTF-8 text; save it as UTF-8 (a YAML or JSON file).") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        else:
            import yaml

            # An alias repeats a value without copying it, so a few lines can expand to gigabytes
            # once saved as metadata: recipes write their values out.
            check(not any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text)),
                  f"Recipe '{path.name}' uses a YAML alias (*name); write the value out instead.")
            data = yaml.load(text, Loader=_recipe_loader(path))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - json and yaml parse errors come in many types
        first = first_line(e)
        raise UserError(f"Recipe '{path.name}' is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    check(isinstance(data, dict), f"Recipe '{path.name}' must be a mapping of setting: value.")
    return data


def _unique_keys(pairs, path: Path) -> dict:
    """A mapping from (key, value) pairs, refusing a key given twice (json and yaml would keep the last silently)."""
    out = {}
    for key, value in pairs:
        check(key not in out, f"Recipe '{path.name}' sets {shorten(key)} twice; keep one of them.")
        out[key] = value
    return out


def _recipe_loader(path: Path):
    """yaml.SafeLoader whose mappings refuse a key given twice."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)
            pairs = [(self.construct_object(k, deep=deep), self.construct_object(v, deep=deep)) for k, v in node.value]
            return _unique_keys(pairs, path)

    RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, RecipeLoader.construct_mapping)
    return RecipeLoader


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The file's mapping on top of the recipe it extends (recursively)."""
    path = path.resolve()
    check(path not in seen, f"Recipe '{path.name}' extends itself through {' -> '.join(p.name for p in seen)}.")
    data = _read_mapping(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    check(isinstance(parent, str), f"'extends' in '{path.name}' must be a file name.")
    base = _resolve(path.parent / parent, seen + (path,))
    base.pop("description", None)
    return {**base, **data}


def load_recipe(path: str | Path, kind: str) -> dict[str, Any]:
    """A recipe file -> keyword arguments for TrainConfig (kind 'train') or EvalConfig ('eval').

    Unknown keys, a recipe of the other kind and invalid values are refused with one sentence.
    """
    cls = config_class(kind)
    path = Path(path)
    data = _resolve(path)
    declared = data.pop("kind", kind)
    check(declared in KINDS, f"'{path.name}' has kind {shorten(declared)}; a recipe's kind is 'train' or 'eval'.")
    check(declared == kind, f"'{path.name}' is a recipe for `{declared}`, not `{kind}`; use it with `{declared} --config`.")
    data.pop("description", None)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"Unknown setting '{key}' in {kind} recipe '{path.name}'{hint}; "
                            f"known settings: {', '.join(names)}.")
    out = dict(data)
    for key in PER_255:
        if out.get(key) is not None:
            value = out[key]
            check(isinstance(value, (int, float)) and not isinstance(value, bool),
                  f"'{key}' in '{path.name}' must be a number of 1/255 steps; got {value!r}.")
            out[key] = from_255(value)
    for key in LIST_FIELDS:
        if isinstance(out.get(key), str):
            out[key] = [s.strip() for s in out[key].split(",") if s.strip()]
    if kind == "train" and isinstance(out.get("out"), str):
        out["out"] = checkpoint_out(out["out"])
    try:
        cls(**out).validate()
    except TypeError as e:
        raise UserError(f"Recipe '{path.name}' has a setting of the wrong type: {e}.") from None
    except UserError as e:
        raise UserError(f"In recipe '{path.name}': {e}") from None
    return out


def checkpoint_out(out: str) -> str:
    """A bare file name -> that file in the checkpoint folder; any path with a folder is kept as given."""
    from ..core.env import checkpoint_dir

    return str(checkpoint_dir() / out) if out and Path(out).name == out else out


def recipe_values(config) -> dict[str, Any]:
    """A TrainConfig / EvalConfig -> the mapping a recipe file holds (eps and step sizes in /255)."""
    values = dataclasses.asdict(config)
    for key in PER_255:
        if values.get(key) is not None:
            values[key] = to_255(values[key], 6)
    return values


def save_recipe(path: str | Path, config, description: str | None = None) -> Path:
    """Write every setting of a TrainConfig / EvalConfig as a recipe that load_recipe reads back."""
    from ..evaluation.accuracy import EvalConfig

    path = Path(path)
    kind = "eval" if isinstance(config, EvalConfig) else "train"
    head = {"kind": kind, **({"description": description} if description else {})}
    body = {**head, **recipe_values(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(body, indent=2) + "\n")
    else:
        import yaml

        path.write_text("# eps and step_size in /255 units\n" + yaml.safe_dump(body, sort_keys=False))
    return path
