"""The stages of dvc.yaml as the flow runs them: in its own process, or as a child process.

A leaf module (no imports): the flow (flows.compress) runs the stages by these names and the
alert hook (flows.alerts) finds the failed ones among a run's task runs by them.
"""

# Stages that build a model, and how long one build may take (seconds). Each runs as a child
# process with exactly the command dvc.yaml gives it (`python -m stages.prune NAME`, cwd the
# workspace, this interpreter), so the flow and `dvc repro` run the same code path by
# construction. In threads of one process, concurrent builds shared torch's global RNG (weight
# init, dropout: seeding at stage start cannot protect a build from its neighbour re-seeding or
# drawing) and torch.set_num_threads, which is process-wide and changes float results (smoke
# prune@teacher_ch50 on 1 vs 2 threads: different weights). A torch.Generator per build cannot
# cover dropout (F.dropout takes none) nor a user's own module's init, and the thread count stays
# shared, so process isolation it is. Its cost on 2 cores (smoke profile, a warm in-process call
# vs `python -m stages.<stage> NAME`, medians of 3): 2.1 s more per build for quantize, 2.8-2.9 s
# for prune, distill and merge, 1.5 s of it importing torch; 13 candidates on 2 workers add
# ~20 s to a smoke run, under 2% of a default one, whose builds take minutes.
MODEL_STAGES: dict[str, int] = {
    "train_teacher": 4 * 3600, "distill": 4 * 3600, "prune": 4 * 3600, "merge": 4 * 3600,
    "quantize": 3600, "search": 24 * 3600, "finalist": 4 * 3600,
}  # fmt: skip
# Stages that publish artifacts or retry I/O run inside the flow (the Prefect run context), as
# the tasks of flows.in_process: the stage module's `run`, with a retry policy and artifacts.
IN_PROCESS = ("source", "production", "ingest", "evaluate", "gate", "promote")
STAGES = (*IN_PROCESS, *MODEL_STAGES)
