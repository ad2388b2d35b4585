"""The budget search's trial fine-tunes on a Dask cluster whose workers share no disk with it.

A flow whose task runner is Dask (flow.task_runner) runs the search stage with the scheduler's
address in $SQUEEZE_SEARCH_DASK (flows.compress); the stage then fine-tunes each batch of
search.parallel trials side by side on the cluster's workers (dask_pool) instead of one after the
other (squeeze.methods.search.one_by_one). A worker gets everything a fine-tune reads in memory
(squeeze.methods.search.Inputs, pickled once per batch and broadcast) and returns the exported
trial's bytes and its search accuracy: it reads and writes no file of the workspace. The probes
and every latency timing stay in the search's process, after the batch, so no timing runs beside
a fine-tune. dask.distributed's Client.scatter / Client.map; cloudpickle's pickling by value.
"""

from __future__ import annotations

import pickle
import sys
from typing import TYPE_CHECKING

import cloudpickle

from squeeze.methods.search import Choice, Inputs, Pool, TrialFit, attempt

if TYPE_CHECKING:
    from distributed import Client

DASK_ENV = "SQUEEZE_SEARCH_DASK"  # the scheduler address the search's fine-tunes go to
INSTALLED = ("squeeze", "torch")  # packages a worker imports itself (the project's install)


def fine_tune_on_worker(choice: Choice, blob: bytes) -> TrialFit:
    """attempt(choice, inputs) on the worker that runs it, with `inputs` from `blob` (packed),
    and the worker's address."""
    from distributed import get_worker

    return attempt(choice, pickle.loads(blob)), get_worker().address


def packed(inputs: Inputs) -> bytes:
    """The inputs as bytes a worker loads without the workspace: the network's class goes by
    value (cloudpickle.register_pickle_by_value) when the user wrote it (a class_path module the
    workspace holds); squeeze's and torch's come from the worker's own install."""
    module = type(inputs.teacher.net).__module__
    if module.split(".")[0] not in INSTALLED:
        cloudpickle.register_pickle_by_value(sys.modules[module])
    return cloudpickle.dumps(inputs)


def dask_pool(client: Client) -> Pool:
    """A Pool (squeeze.methods.search) that fine-tunes a batch's choices side by side on the
    client's cluster, results in the choices' order."""

    def run(choices: list[Choice], inputs: Inputs) -> list[TrialFit]:
        if not choices:
            return []
        blob = client.scatter(packed(inputs), broadcast=True)
        return client.gather(client.map(fine_tune_on_worker, choices, blob=blob, pure=False))

    return run
