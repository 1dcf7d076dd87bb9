"""`python -m pmg_core bench`: how fast training and evaluation steps run, against two yardsticks.

One run on one device times our real code path against the public code's way of computing the same
step (the reference) and the passes no implementation can avoid (the floor), and studies what
per-sample early stop buys robust evaluation. The package is layered so each part can be read and
reused alone:

- instruments: timing, peak memory, FLOP and pass counting, device facts (know nothing of PMG-AFT);
- config: BenchConfig and the measured setup (a Trainer on random images, a fixed batch);
- yardsticks: the reference step and the floor of passes;
- steps: training steps, PGD alone and robust evaluation, ours against both yardsticks;
- early_stop: the early-stop study of robust evaluation;
- run: run_bench, every requested part as one JSON report; report: that report as Markdown;
- cli: the `bench` sub-command.

Imports the floors below it (core/ to evaluation/: it times the library's own code paths); only
cli/ imports it.
"""
from .cli import add_parser
from .config import METHODS, PARTS, BenchConfig, fixed_batch, make_trainer
from .report import to_markdown
from .run import run_bench
from .yardsticks import Reference

__all__ = ["METHODS", "PARTS", "BenchConfig", "Reference", "add_parser", "fixed_batch", "make_trainer", "run_bench",
           "to_markdown"]
