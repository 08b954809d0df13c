"""P1's setup that the configs and the sweeps share: its tasks, its two backbones' training regimes, its seeds and
suppression rates, and the identity every sweep file carries (read by make_configs.py, experiment_sweeps.py and
attack_sweeps.py)."""

# P1's nine tasks (its src/config/<Task>Prompt{Roberta,T5}.config files) in the task-type order sentiment, NLI, paraphrase, ethics; RTE is not one
# of them: configs/<backbone>/rte.yaml is written too (same regime), but the paper grid leaves it out.
PAPER_TASKS = ["sst2", "imdb", "movie_rationales", "mnli", "qnli", "qqp", "mrpc", "ethics_deontology", "ethics_justice"]
TASKS = [*PAPER_TASKS, "rte"]
P1_CONFIG = {"sst2": "SST2", "imdb": "IMDB", "movie_rationales": "movierationales", "mnli": "MNLI", "qnli": "QNLI",
             "qqp": "QQP", "mrpc": "MRPC", "ethics_deontology": "ethicsdeontology", "ethics_justice": "ethicsjustice",
             "rte": None}
BACKBONES = {
    # src/config/*PromptRoberta.config: [train] epoch, batch_size (MRPC 8), learning_rate 1e-3, max_len 128.
    "roberta": dict(model="MaskedLMPromptTuning", backbone="roberta-base", p1="Roberta", lr={}, default_lr=1e-3,
                    epochs={"sst2": 76, "imdb": 72, "mrpc": 72, "qqp": 96}, default_epochs=128,
                    batch={"mrpc": 8}, prompt_init="normal",
                    init_note="N(0, 0.02): modelling_roberta.py RobertaEmbeddings._init_weights on prompt_embeddings"),
    # src/config/*PromptT5.config: epoch 200 (QNLI 100), learning_rate 5e-3 (QNLI 1e-2), batch 16, max_len 128.
    "t5": dict(model="Seq2SeqPromptTuning", backbone="t5-base", p1="T5", lr={"qnli": 1e-2}, default_lr=5e-3,
               epochs={"qnli": 100}, default_epochs=200, batch={}, prompt_init="vocab",
               init_note="P1's T5 training code is not in its repository (initial_prompt = True in the configs); "
                         "sampled vocabulary embeddings"),
}

# What every generated sweep file says about where its runs go and what it optimises (the W&B project).
SWEEP_IDENTITY = """\
# `project` keeps the sweep and its runs in the project of `skill-neurons fit` (without it `wandb sweep` names
# the project after the folder); add `entity: <team>` to log into a team. Run `wandb agent` from the
# repository root: the config paths below are relative to it.
name: {name}
project: skill-neurons
program: skill_neurons/cli.py
method: grid
metric:
  name: val/acc
  goal: maximize
parameters:
"""

SEEDS = [33, 34, 35, 36, 37]
RATES = [0, 1, 3, 5, 7, 9, 11, 13, 15]
