"""The one error kind every stage shares: a refusal of its inputs.

A stage that refuses (a teacher that learned nothing, a sparsity a layer cannot take) raises a
subclass of StageRefused whose message names the params key and what to change; the stage's
`python -m` entry point prints that one line and exits non-zero instead of a traceback.
"""


class StageRefused(ValueError):
    """A stage cannot make a usable model from its params and inputs; the message says why."""
