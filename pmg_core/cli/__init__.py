"""The top floor: `python -m pmg_core <command>`, wiring what a person types to the library.

Holds the parser and the train, eval, attack, models, datasets and import commands (`commands`),
the `cards` and `zoo` sub-commands (`cards`, `zoo`; `pretrain` and `bench` bring their own), and
run recipes as files (`recipes`: the settings a person would type, in YAML). Imports every floor.

`from pmg_core.cli.commands import main` and every other name of `commands` work as they did when this
floor was one module.
"""
from ..core.layout import lend

__getattr__, __dir__ = lend(__name__, "commands")
