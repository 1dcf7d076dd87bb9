"""The ground floor: facts about the machine and the primitives every floor shares.

Holds the errors people read (`UserError`, `check`), the environment (devices, offline mode, where
checkpoints live), the one `Registry` shape, /255 units, thread counts and numeric precision, and how
the package's names are found (`layout`). Imports nothing of pmg_core: every other floor may import it.
"""
