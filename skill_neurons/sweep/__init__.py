"""``skill-neurons sweep``: run a W&B sweep config without a W&B server — resumable after any crash.

    skill-neurons sweep sweeps/quickstart.yaml                   # the whole grid, one trial at a time
    skill-neurons sweep sweeps/search.yaml --count 30 --workers 4 --dir runs/search-1
    skill-neurons sweep --status runs/search-1                   # the table of trials

The same YAML works with ``wandb sweep FILE`` + ``wandb agent ID``. Here W&B's own open-source sweep engine
(PyPI ``sweeps``) proposes each configuration (``next_run``: grid, random, bayes) and picks the trials to
stop early (``stop_runs``: hyperband); this runner does what the agent and the server would do:

* A trial is the sweep's ``command`` with ``${args}`` (and ``${program}``, ``${args_json_file}``, ...) rendered
  exactly as ``wandb agent`` renders them (:func:`render_command`), run in the current directory in a process
  group of its own, with ``WANDB_RUN_ID`` (a new id per attempt), ``WANDB_RUN_GROUP`` (the sweep's name),
  ``WANDB_SWEEP_PARAM_PATH`` and W&B offline (unless ``WANDB_MODE`` says otherwise). Two differences from
  the agent: ``python`` in the command means the interpreter running this runner (its folder goes first on
  ``PATH``), and ``WANDB_DIR`` is the trial's run directory. Output goes to ``DIR/logs/<run id>.log``.
* A trial reports through ``$SKILL_NEURONS_RUNS_DIR/<run id>/summary.json`` — the file the skill-neurons
  CLI writes (``skill-neurons fit`` uses ``$SKILL_NEURONS_RUNS_DIR`` as its ``--runs_dir``). Metrics are read
  from its ``history`` (one dict per epoch; hyperband reads it while the trial runs, the CLI rewrites it after
  every validation) and from ``fit_metrics`` / ``validate_metrics`` / ``test_metrics`` / ``summary`` and
  ``best`` (as ``best/<key>``). The objective is the best value of ``metric.name`` over all of them. Any
  other program can join a sweep by writing that file.
* ``--workers K`` runs K trials at once; each gets one GPU (``CUDA_VISIBLE_DEVICES``) when there are GPUs.
* ``--executor slurm`` (``--slurm.partition P --slurm.gpus_per_task 1 --slurm.time MIN``; ``--parallel N`` is
  ``--workers``: the arrays' ``slurm_array_parallelism``) submits the trials as SLURM job arrays through
  submitit, ``--executor local`` as submitit's local jobs; the engine, state and resume stay these
  (:mod:`skill_neurons.sweep.cluster`: one state writer, the runner; jobs write only their trial's files).

State and resume: ``DIR/state.json`` (rewritten atomically at every change) holds the sweep id, its config
and every trial with its parameters, attempts, state and metrics. A trial is recorded as running *before* its
process starts. Killed at any moment and started again with the same command, the runner (1) kills what is
left of the trials that were running (found by the marker ``SKILL_NEURONS_SWEEP_TRIAL`` in their
environment; on Linux the trials already got SIGTERM when the runner died), (2) keeps a trial whose
``summary.json`` says ``finished``, (3) starts the others again from scratch under a new run id — at most
``--retries`` times, then the trial is ``crashed`` — and (4) asks the engine for more. Finished, failed and
early-stopped trials are never run again, so a grid ends with each combination done exactly once.
``--count N`` counts every trial in DIR, so the same command finishes the same sweep; one runner per DIR.
Every attempt's offline W&B run is linked into DIR: ``wandb leet DIR`` browses them, ``wandb sync DIR``
uploads them (grouped by the sweep's name: W&B cannot attach offline runs to a sweep).
"""
