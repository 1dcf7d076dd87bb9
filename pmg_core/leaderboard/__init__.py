"""The leaderboard floor: results people can compare, each with its n, its interval and its provenance.

Holds robustness cards (`cards`: one model under one protocol, cell by cell, with provenance), the
statistics every number carries (`stats`: Wilson, bootstrap, exact McNemar; `card_stats`: those
applied to cards), the board (`board`: cards side by side, in bands), what it says in sentences
(`findings`) and the field's reported numbers beside ours (`reported`). Imports every floor below it
(core/ to evaluation/).
"""
