"""Classes by name, for the objects people pick with a word (methods, test-time defenses)."""
from __future__ import annotations

from typing import Callable

from .errors import check


class Registry(dict):
    """name -> class; `register(name)` is the class decorator and sets the class's `name`."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            cls.name = name
            self[name] = cls
            return cls

        return deco

    def find(self, name: str) -> type:
        """The class registered as `name`, or one sentence naming the choices."""
        check(name in self, f"Unknown {self.kind} '{name}': choose one of {', '.join(self)}.")
        return self[name]
