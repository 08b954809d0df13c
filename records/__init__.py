"""The project's records, on disk and on the dashboard, one owner each: the run directory and ``summary.json``
(:mod:`records.summary`, atomic writes in :mod:`records.files`, secrets kept out by :mod:`records.secrets`),
whether a run's process is still there (:mod:`records.run_status`), prompt checkpoints
(:mod:`records.prompt_checkpoint`), a fit's prompt as a W&B model artifact (:mod:`records.prompt_artifact`),
neuron files (:mod:`records.neuron_files`), a run's settings and artifact name (:mod:`records.settings`), the
W&B config, names and tags (:mod:`records.wandb_config`), a run's configuration and sweep trial
(:mod:`records.configuration`, :mod:`records.sweep_trial`), a prompt's provenance and a command's identity
(:mod:`records.run_identity`), relative transfer (:mod:`records.transfer`) and the style of every saved figure
(:mod:`records.figures`).

The bottom layer: no module here imports Lightning, transformers, datasets, W&B or a project module outside
``records``; everything else may import it.
"""
