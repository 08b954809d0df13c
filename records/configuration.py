"""What a *configuration* is: the settings that make two runs different experiments rather than two seeds of one.

Two fit runs belong to one configuration when their resolved LightningCLI configs (``summary.json`` → ``config``,
flat keys such as ``model.learning_rate``) agree on every key except

* the seed (``seed_everything``): the seeds of one configuration are what a seed mean averages;
* per-run paths and identities (:data:`records.wandb_config.PER_RUN_KEYS`, the checkpoint to resume from);
* how the run is shown or tracked, never what it computes (:data:`PRESENTATION_KEYS`: the W&B logger's name,
  group, tags, project; progress bars; logging frequency; data-loader workers; the sets ``predict`` writes).

Everything else — learning rate, prompt length, epochs, batch size, data sizes (``max_train_samples``), layout,
the analysis' options — distinguishes configurations: a run trained on 64 rows is not another seed of one trained
on 640. Plain functions of plain data (no Lightning, no I/O), used wherever runs are grouped or told apart: the
report's seed means, the names of sweep trials and the candidates an ambiguous ``--from_run`` lists.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

from records.wandb_config import PER_RUN_KEYS, clean_config

SEED_KEY = "seed_everything"
# Keys (or key prefixes ending in ".") that change how a run is shown, logged or scheduled, not its numbers.
PRESENTATION_KEYS = (
    "trainer.logger.", "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.callbacks.RichProgressBar.", "trainer.callbacks.TQDMProgressBar.", "data.num_workers", "ckpt_path",
    "runs_dir", "config", "print_config", "data.predict_sets",
)
# Options added after runs were made, with the value under which older runs (that lack the key) behaved: a run
# recording that value is the same configuration as an older run without the key.
ADDED_DEFAULTS = {"data.train_split": "train"}
# Short spellings of the keys users sweep most, for names such as ``tiny-roberta·marker·s33·lr3e-3``.
ABBREVIATIONS = {
    "model.learning_rate": "lr", "model.prompt_length": "p", "model.weight_decay": "wd", "data.batch_size": "bs",
    "trainer.max_epochs": "ep", "data.max_train_samples": "n",
    "suppression.adversarial_neurons": "adv-", "suppression.neuron_source": "neurons-",
    # values that read as themselves: tiny-roberta, paper, marker
    "model.backbone": "", "model.layout": "", "data.task": "",
}


def _ignored(key: str) -> bool:
    if key == SEED_KEY or key in PER_RUN_KEYS:
        return True
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in PRESENTATION_KEYS)


def configuration_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a flat resolved config that define its configuration (sorted keys; see the module
    docstring for what is left out). Lists of callbacks are spelled out one key per argument first, so a
    callback option is compared like any other setting."""
    cleaned = clean_config(dict(config))
    return {key: cleaned[key] for key in sorted(cleaned)
            if not _ignored(key) and not (key in ADDED_DEFAULTS and cleaned[key] == ADDED_DEFAULTS[key])}


def configuration_id(config: Mapping[str, Any]) -> str:
    """A short stable id of :func:`configuration_of` (8 hex digits): equal ids, one configuration."""
    text = json.dumps(configuration_of(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def differing_keys(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The configuration keys whose values are not the same in every one of ``configs`` (a key missing from
    some counts as differing), sorted."""
    settings = [configuration_of(c) for c in configs]
    keys = sorted({k for s in settings for k in s})

    def spelled(s: dict[str, Any], key: str) -> str:
        return json.dumps(s[key], sort_keys=True, default=str) if key in s else "<unset>"

    return [k for k in keys if len({spelled(s, k) for s in settings}) > 1]


def format_value(value: Any) -> str:
    """A setting's value as it reads in a name: ``0.003`` -> ``3e-3``, ``0.01`` -> ``0.01``, ``True`` ->
    ``true``, a list -> its items joined by ``,``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:g}"
        mantissa, exponent = f"{value:.3e}".split("e")  # 0.003 -> 3e-3, 1e-05 -> 1e-5
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("name", "…"))
    return str(value)


def short_key(key: str) -> str:
    """``model.learning_rate`` -> ``lr``; a key without an abbreviation -> its last segment (``max_epochs``)."""
    return ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1])


def label(config: Mapping[str, Any], keys: Iterable[str]) -> str:
    """The values of ``keys`` in ``config``'s configuration as a short label, ``·``-free: ``lr3e-3-p16``; keys
    that are not set are left out. Empty when ``keys`` is empty."""
    settings = configuration_of(config)
    parts = []
    for key in keys:
        if key in settings:
            short = short_key(key)
            parts.append(f"{short}{format_value(settings[key])}" if short else format_value(settings[key]))
    return "-".join(parts)
