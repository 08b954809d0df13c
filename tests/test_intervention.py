"""NeuronIntervention: activation patching and scaling, against brute force (plain hooks on modules named here,
one unpadded example per forward), their identities, batching, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from lightning import Callback

from callbacks.intervention import InterventionError, NeuronIntervention, gap_restored, set_accuracies
from callbacks.skill_neurons import SkillNeuronCallback, load_neuron_file
from callbacks.suppression import NeuronSuppression
from datamodules.prompt_datamodule import Collator, pad_id_of
from records.errors import OptionError
from records.neuron_files import SkillNeuronError
from records.neuron_selection import sizing_of, top_percent_mask
from tests.helpers.tiny import MARKER, P, make, marker_task, validate
from tests.test_causal_lm import causal_backbones, make as make_causal  # noqa: F401 (a fixture)


class RecordLogits(Callback):
    """Each evaluated example's logits as the step computes them (the intervention's hooks still on)."""

    def __init__(self):
        self.logits: dict[tuple[int, int], torch.Tensor] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with torch.no_grad():
            logits = pl_module.loss_and_logits(batch)[1]
        for row, value in zip(batch["idx"].tolist(), logits):
            self.logits[(dataloader_idx, row)] = value.clone()


def units_modules(model) -> list[tuple[torch.nn.Module, str]]:
    """Each layer's FFN units, found here independently of ffn.py: (module, "output" | "input")."""
    backbone = model.backbone
    kind = backbone.config.model_type
    if kind == "roberta":
        return [(layer.intermediate, "output") for layer in backbone.roberta.encoder.layer]
    if kind == "t5":
        return [(block.layer[-1].DenseReluDense.wo, "input") for block in backbone.encoder.block]
    return [(block.mlp.c_proj, "input") for block in backbone.transformer.h]


def hooked_logits(model, batch, fn) -> torch.Tensor:
    """The model's logits with ``fn(layer, units (1, S, N)) -> units`` applied by plain hooks."""
    handles = []
    for layer, (module, where) in enumerate(units_modules(model)):
        if where == "output":
            handles.append(module.register_forward_hook(lambda m, a, out, layer=layer: fn(layer, out)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, layer=layer: (fn(layer, a[0]),)))
    try:
        with torch.no_grad():
            return model.loss_and_logits(batch)[1][0]
    finally:
        for handle in handles:
            handle.remove()


def brute_patch(model, dm, split, masks, positions) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per adversarial row: (patched, unpatched, clean) logits, one unpadded example at a time. ``positions``:
    a list of absolute positions, or None for the last text position."""
    collate, out = Collator(pad_id_of(dm.tokenizer)), {}
    for row in dm.datasets[split]:
        batch = collate([row])
        twin = {"input_ids": batch["clean_input_ids"], "attention_mask": batch["clean_attention_mask"],
                "mask_index": batch["clean_mask_index"], "labels": batch["labels"], "idx": batch["idx"]}
        at_clean = positions or [P + len(row["clean_input_ids"]) - 1]
        at_adv = positions or [P + len(row["input_ids"]) - 1]
        seen = {}

        def record(layer, units):
            seen[layer] = units[0, at_clean][:, masks[layer]].clone()
            return units

        def patch(layer, units):
            units = units.clone()
            for q, t in enumerate(at_adv):
                units[0, t, masks[layer]] = seen[layer][q]
            return units

        clean = hooked_logits(model, twin, record)
        out[int(row["idx"])] = (hooked_logits(model, batch, patch), hooked_logits(model, batch, lambda l, u: u), clean)
    return out


def neuron_run(root, model, dm, **analysis):
    validate(model, dm, root, SkillNeuronCallback(**analysis))
    return root


FAMILIES = {
    "roberta-paper": (lambda **kw: make("masked_lm", layout="paper", **kw), {}),
    "t5": (lambda **kw: make("seq2seq", **kw), {}),
    "gpt2": (lambda **kw: make_causal("tiny-gpt2", **kw), {"positions": "last"}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_patching_equals_brute_force_on_every_family(tmp_path, tiny_backbones, causal_backbones, family):
    build, analysis = FAMILIES[family]
    model, dm = build(eval_batch_size=7, max_eval_samples=16)  # batches of 7, 7, 2: padding in each
    model = model.double()  # float64: batched (padded) and one-example forwards agree far below 1e-6
    run = neuron_run(tmp_path / "neurons", model, dm, **analysis)
    intervention, logits = NeuronIntervention(kind="patch", rate=20, neurons=[str(run)]), RecordLogits()
    validate(model, dm, tmp_path / "patch", intervention, callbacks=[intervention, logits])
    tensors, meta = load_neuron_file(run / "skill_neurons" / "validation.safetensors")
    masks = top_percent_mask(tensors["score"], 20, sizing_of(model.hparams.layout))
    assert torch.equal(intervention.masks[1], masks)
    positions = meta["absolute_positions"]
    assert intervention.positions == positions and (positions is None) == (family == "gpt2")
    split = dm.eval_sets("validate")[1].split
    reference = brute_patch(model, dm, split, masks, positions)
    for row, (patched, _, _) in reference.items():
        torch.testing.assert_close(logits.logits[(1, row)], patched, rtol=0, atol=1e-6)
    labels = {int(r["idx"]): int(r["label"]) for r in dm.datasets[split]}
    want = [sum(int(v[k].argmax()) == labels[row] for row, v in reference.items()) / len(reference) for k in range(3)]
    got = intervention.record["sets"][dm.eval_sets("validate")[1].name]
    assert (got["acc"], got["acc_unperturbed"], got["acc_clean"]) == tuple(want)
    assert got["gap_restored"] == gap_restored(*want)
    assert any(not torch.allclose(p, u) for p, u, _ in reference.values())  # patching changed something


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("alpha, baseline", [(0.5, "zero"), (2.0, "mean")])
def test_scaling_equals_brute_force_on_every_family(tmp_path, tiny_backbones, causal_backbones, family, alpha,
                                                    baseline):
    build, analysis = FAMILIES[family]
    model, dm = build(eval_batch_size=5, max_eval_samples=12)
    model = model.double()
    run = neuron_run(tmp_path / "neurons", model, dm, **analysis)
    intervention = NeuronIntervention(kind="scale", alpha=alpha, baseline=baseline, rate=20, neurons=[str(run)])
    logits = RecordLogits()
    validate(model, dm, tmp_path / "scale", intervention, callbacks=[intervention, logits])
    tensors, meta = load_neuron_file(run / "skill_neurons" / "validation.safetensors")
    masks = top_percent_mask(tensors["score"], 20, sizing_of(model.hparams.layout))
    threshold, at = tensors["threshold"], meta["absolute_positions"] or [0]  # (L, P', N)
    collate = Collator(pad_id_of(dm.tokenizer))

    def scale(layer, units):
        units = units.clone()
        base = torch.zeros_like(units[0])  # (S, N)
        if baseline == "mean":
            base[:] = threshold[layer].mean(dim=0)
            for k, t in enumerate(at):
                if t < units.shape[1]:
                    base[t] = threshold[layer][k]
        sel = masks[layer]
        units[0][:, sel] = base[:, sel] + alpha * (units[0][:, sel] - base[:, sel])
        return units

    for loader, evaluated in enumerate(dm.eval_sets("validate")):
        for row in dm.datasets[evaluated.split]:
            want = hooked_logits(model, collate([row]), scale)
            torch.testing.assert_close(logits.logits[(loader, int(row["idx"]))], want, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def roberta_run(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("roberta-neurons")
    model, dm = make("masked_lm")
    return neuron_run(root, model, dm)


def run_with(tmp_path, run, *callbacks, batch_size=16, task=None, double=False):
    model, dm = make("masked_lm", eval_batch_size=batch_size, **({"task": task} if task else {}))
    model = model.double() if double else model  # float64: other batch shapes round alike far below 1e-6
    logits = RecordLogits()
    trainer = validate(model, dm, tmp_path, logits, callbacks=[*callbacks, logits])
    return trainer, logits


def test_alpha_zero_is_suppression_and_alpha_one_changes_nothing_bit_for_bit(tmp_path, roberta_run):
    neurons = [str(roberta_run)]
    _, plain = run_with(tmp_path / "plain", roberta_run)
    for baseline in ("zero", "mean"):
        _, zero = run_with(tmp_path / f"supp-{baseline}", roberta_run,
                           NeuronSuppression(rate=10, perturbation=baseline, neurons=neurons))
        _, alpha0 = run_with(tmp_path / f"a0-{baseline}", roberta_run,
                             NeuronIntervention(kind="scale", alpha=0, baseline=baseline, rate=10, neurons=neurons))
        _, alpha1 = run_with(tmp_path / f"a1-{baseline}", roberta_run,
                             NeuronIntervention(kind="scale", alpha=1, baseline=baseline, rate=10, neurons=neurons))
        assert zero.logits.keys() == alpha0.logits.keys() == plain.logits.keys()
        for key, value in zero.logits.items():
            assert torch.equal(alpha0.logits[key], value), (baseline, key)
            assert torch.equal(alpha1.logits[key], plain.logits[key]), (baseline, key)
        assert any(not torch.equal(zero.logits[k], plain.logits[k]) for k in plain.logits)


def test_patching_no_unit_is_plain_validation_and_clean_to_clean_changes_nothing(tmp_path, roberta_run):
    plain, plain_logits = run_with(tmp_path / "plain", roberta_run)
    nothing = NeuronIntervention(kind="patch", rate=0, neurons=[str(roberta_run)])
    none, _ = run_with(tmp_path / "n0", roberta_run, nothing)
    for key in ("val/acc", "val/loss", "adv/typos/acc", "adv/typos/loss"):
        assert float(none.callback_metrics[key]) == float(plain.callback_metrics[key]), key
    # an adversarial set whose clean twin is the text itself: patching copies each unit onto itself
    rows = [json.loads(line) for line in (MARKER / "validation.jsonl").read_text().splitlines()]
    same = tmp_path / "self.jsonl"
    same.write_text("".join(json.dumps({**r, "original_sentence": r["sentence"]}) + "\n" for r in rows))
    task = marker_task()
    task["adversarial"] = {"typos": {"file": str(same), "columns": {"sentence": "sentence", "label": "label"}}}
    _, plain_self = run_with(tmp_path / "plain-self", roberta_run, task=task)
    intervention = NeuronIntervention(kind="patch", rate=50, neurons=[str(roberta_run)])
    _, patched = run_with(tmp_path / "self", roberta_run, intervention, task=task)
    assert patched.logits.keys() == plain_self.logits.keys()
    assert all(torch.equal(patched.logits[k], v) for k, v in plain_self.logits.items())
    assert intervention.record["sets"]["typos"]["acc"] == intervention.record["sets"]["typos"]["acc_unperturbed"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"kind": "patch"}, {"kind": "scale", "alpha": 2.0, "baseline": "mean"}],
                         ids=["patch", "scale"])
def test_interventions_are_exact_under_batch_sizes_1_7_and_64(tmp_path, roberta_run, options):
    records, logits = [], []
    for size in (1, 7, 64):
        intervention = NeuronIntervention(**options, rate=10, neurons=[str(roberta_run)])
        _, recorded = run_with(tmp_path / str(size), roberta_run, intervention, batch_size=size, double=True)
        records.append(intervention.record["sets"])
        logits.append(recorded.logits)
    assert records[0] == records[1] == records[2]
    for key, value in logits[0].items():
        for other in logits[1:]:
            torch.testing.assert_close(other[key], value, rtol=0, atol=1e-6)


def test_set_accuracies_count_each_row_once_and_gap_restored():
    rows = {0: (1, 0, 1), 1: (1, 1, 1), 2: (0, 0, 1), 3: (0, 0, 0)}
    assert set_accuracies(rows) == {"rows": 4, "acc": 0.5, "acc_unperturbed": 0.25, "acc_clean": 0.75,
                                    "gap_restored": 0.5}
    assert gap_restored(0.5, 0.6, 0.6) is None


def test_bad_input_names_the_fix(tmp_path, roberta_run):
    with pytest.raises(OptionError, match=r"intervention.alpha=-1.0: give a factor in \[0, 10\]"):
        NeuronIntervention(kind="scale", alpha=-1.0)
    with pytest.raises(OptionError, match="alpha=11"):
        NeuronIntervention(kind="scale", alpha=11)
    with pytest.raises(OptionError, match="kind=scale needs --intervention.alpha"):
        NeuronIntervention(kind="scale")
    with pytest.raises(OptionError, match="alpha applies to kind=scale"):
        NeuronIntervention(kind="patch", alpha=2)
    with pytest.raises(OptionError, match="intervention.kind='swap'"):
        NeuronIntervention(kind="swap")
    with pytest.raises(OptionError, match=r"intervention.rate=120"):
        NeuronIntervention(kind="patch", rate=120)
    # an adversarial set without original_<field>: named, with what pairing needs
    task = marker_task()
    task["adversarial"]["plain"] = {"file": str(MARKER / "validation.jsonl"),
                                    "columns": {"sentence": "sentence", "label": "label"}}
    model, dm = make("masked_lm", task=task)
    with pytest.raises(InterventionError, match=r"adversarial set\(s\) plain cannot be paired .* original_sentence"):
        validate(model, dm, tmp_path / "u", NeuronIntervention(kind="patch", neurons=[str(roberta_run)]))
    # a unit selection from another backbone (tiny T5's neuron files on the tiny RoBERTa)
    t5, t5_dm = make("seq2seq")
    t5_run = neuron_run(tmp_path / "t5", t5, t5_dm)
    model, dm = make("masked_lm")
    with pytest.raises(SkillNeuronError, match="use neuron files of the same backbone"):
        validate(model, dm, tmp_path / "b", NeuronIntervention(kind="patch", neurons=[str(t5_run)]))


@pytest.mark.slow
def test_patching_the_skill_neurons_restores_more_of_the_gap_than_random_units(tmp_path, tiny_backbones):
    """Planted structure: a prompt trained to detect the marker word loses it when the word is misspelled; the
    skill neurons are the units whose prompt-position activations track the marker, so copying them from the
    clean twin must restore more of the clean-vs-typo gap than copying as many random units."""
    from lightning import Trainer, seed_everything

    from datamodules import PromptDataModule
    from lightning_modules import MaskedLMPromptTuning

    seed_everything(0)
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=8, learning_rate=1e-2)
    dm = PromptDataModule(task="marker", backbone="tiny-roberta", prompt_length=8, batch_size=32, eval_batch_size=200)
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
            max_steps=300, limit_val_batches=0).fit(model, dm)
    model.eval()
    run = neuron_run(tmp_path / "neurons", model, dm)
    gaps = {}
    for selection in ("skill", "random"):
        intervention = NeuronIntervention(kind="patch", rate=10, selection=selection, neurons=[str(run)])
        validate(model, dm, tmp_path / selection, intervention)
        gaps[selection] = intervention.record["sets"]["marker_typo"]
    assert gaps["skill"]["acc_clean"] > gaps["skill"]["acc_unperturbed"]  # there is a gap to restore
    assert gaps["skill"]["acc_unperturbed"] == gaps["random"]["acc_unperturbed"]
    assert gaps["skill"]["gap_restored"] > gaps["random"]["gap_restored"], gaps


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_cpu_ddp_intervenes_and_counts_every_row_once_as_one_process_does(tmp_path, tiny_backbones):
    """The CLI end to end: a short fit (with its skill-neuron analysis), then the same patching, and the same
    scaling, run in one process (batch 7) and in two DDP processes (batch 64, the shards padded by the sampler):
    the same record."""
    from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, run_cli, summary_of

    small = ["--trainer.max_epochs=1", "--data.max_train_samples=256", "--data.max_eval_samples=41",
             "--data.batch_size=16", "--model.learning_rate=0.03"]
    cli_in_process(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *QUICK, *small, "--runs_dir=fits"],
                   cwd=tmp_path, check=True)
    fit_run = only_run_dir(tmp_path / "fits")
    scale = ["--intervention.kind=scale", "--intervention.alpha=2", "--intervention.baseline=mean"]
    for name, options in (("patch", ["--intervention.kind=patch"]), ("scale", scale)):
        options = [*options, "--intervention.rate=10"]
        cli_in_process(["validate", "--from_run", str(fit_run), *QUICK, *options, "--data.eval_batch_size=7",
                        f"--runs_dir=one_{name}"], cwd=tmp_path, check=True)
        run_cli(["validate", "--from_run", str(fit_run), *QUICK, *options, "--data.eval_batch_size=64",
                 f"--runs_dir=ddp_{name}", "--trainer.strategy=ddp", "--trainer.devices=2",
                 "--trainer.accelerator=cpu"], cwd=tmp_path, timeout=900)
        one = summary_of(only_run_dir(tmp_path / f"one_{name}"))
        two = summary_of(only_run_dir(tmp_path / f"ddp_{name}"))
        assert two["status"] == "finished" and two["settings"]["world_size"] == 2
        assert one["intervention"]["sets"] == two["intervention"]["sets"], name
        assert one["intervention"]["sets"]["marker_typo"]["rows"] == 41  # 41 rows: the two shards overlap by one
