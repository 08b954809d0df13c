"""SkillNeuronCallback and the one place that says where FFN neurons live (lightning_modules/ffn.py).

The reference for every number is an independent brute force: plain hooks written here, one example at a
time through the full model, every activation kept, statistics in numpy.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from lightning import LightningModule, Trainer
from torch import nn

from callbacks.skill_neurons import SkillNeuronCallback, SkillNeuronError, load_neuron_file, shard
from datamodules.prompt_datamodule import Collator
from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning
from lightning_modules.ffn import FFNLookupError, ffn_hooks, ffn_shape, ffn_sites
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, run_cli, summary_of
from tests.helpers.tiny import MARKER, P, brute_force_statistics, make, marker_task, validate


# ---------------------------------------------------------------- brute force (independent of ffn.py)
def brute_force_activations(model, dm, role: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Every activation (n, L, P', N) of every example, one example per full forward; labels (n,) from rows."""
    if model.family == "masked_lm":
        modules = [layer.intermediate for layer in model.backbone.roberta.encoder.layer]
    else:
        stack = model.backbone.encoder if part == "encoder" else model.backbone.decoder
        modules = [block.layer[-1].DenseReluDense.wo for block in stack.block]
    positions = P if part == "encoder" else 1
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append(out[0, :positions].clone()))
             if model.family == "masked_lm" else
             m.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, :positions].clone())) for m in modules]
    collate = Collator(dm.tokenizer.pad_token_id)
    acts, labels = [], []
    try:
        with torch.no_grad():
            for row in dm.datasets[role]:
                seen.clear()
                model(collate([row]))  # the full model: logits, not only the encoder
                acts.append(torch.stack(seen).numpy())  # (L, P', N)
                labels.append(row["label"])
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(acts), np.array(labels)


# ---------------------------------------------------------------- correctness
@pytest.mark.parametrize("layout", ["standard", "paper"])
@pytest.mark.parametrize("family", ["masked_lm", "seq2seq"])
def test_statistics_equal_brute_force_for_any_batch_size(tmp_path, tiny_backbones, family, layout):
    """Under ``paper`` the analysed positions 0..P-1 of a masked LM include its <mask> (slot 0), as P1's."""
    model, dm = make(family, layout)
    train_acts, _ = brute_force_activations(model, dm, "train", "encoder")
    expected = {}
    for role in ("validation", "adv/typos"):
        acts, labels = brute_force_activations(model, dm, role, "encoder")
        expected[role] = brute_force_statistics(train_acts, acts, labels)
    for batch_size in (1, 7, 64):
        got = SkillNeuronCallback(batch_size=batch_size).passes(model, dm, ["validation", "adv/typos"])
        for role, want in expected.items():
            np.testing.assert_allclose(got[role]["threshold"].numpy(), want["threshold"], rtol=1e-5, atol=1e-6)
            for key in ("accuracy", "predictivity", "score"):
                np.testing.assert_allclose(got[role][key].numpy(), want[key], atol=1e-6,
                                           err_msg=f"{family} {layout} {role} {key} batch {batch_size}")


def test_t5_decoder_neurons_equal_brute_force_and_multi_token_labels_stay_aligned(tiny_backbones):
    """P1's bug: flattened multi-token targets misaligned labels. Our label words are 3 sub-tokens each;
    the brute force reads each example's label from its own row, so any misalignment would show."""
    model, dm = make("seq2seq")
    assert all(len(dm.tokenizer(w, add_special_tokens=False)["input_ids"]) > 1
               for w in ("contradiction", "entailment"))
    train_acts, _ = brute_force_activations(model, dm, "train", "decoder")
    acts, labels = brute_force_activations(model, dm, "validation", "decoder")
    want = brute_force_statistics(train_acts, acts, labels)
    got = SkillNeuronCallback(part="decoder", batch_size=5).passes(model, dm, ["validation"])["validation"]
    assert got["predictivity"].shape == (2, 1, 256)
    np.testing.assert_allclose(got["accuracy"].numpy(), want["accuracy"], atol=1e-6)
    # the encoder analysis of the same labels also matches
    train_acts, _ = brute_force_activations(model, dm, "train", "encoder")
    acts, labels = brute_force_activations(model, dm, "validation", "encoder")
    got = SkillNeuronCallback(batch_size=16).passes(model, dm, ["validation"])["validation"]
    np.testing.assert_allclose(got["accuracy"].numpy(), brute_force_statistics(train_acts, acts, labels)["accuracy"],
                               atol=1e-6)


def test_strict_greater_than_a_constant_unit_scores_the_share_of_label_zero(tiny_backbones):
    """T5's ReLU leaves units that are 0 on every example: threshold 0, never 0 > 0, so acc = share of y=0."""
    model, dm = make("seq2seq")
    got = SkillNeuronCallback().passes(model, dm, ["validation"])["validation"]
    train_acts, _ = brute_force_activations(model, dm, "train", "encoder")
    acts, labels = brute_force_activations(model, dm, "validation", "encoder")
    dead = (train_acts == 0).all(axis=0) & (acts == 0).all(axis=0)  # (L, P, N)
    assert dead.sum() > 0
    share_of_zero = float((labels == 0).mean())
    assert 0 < share_of_zero < 1
    np.testing.assert_allclose(got["accuracy"].numpy()[dead], share_of_zero, atol=1e-7)
    assert (got["threshold"].numpy()[dead] == 0).all()


def test_three_classes_use_one_vs_rest_and_score_is_the_max_over_classes(tmp_path, tiny_backbones):
    columns = {"sentence": "sentence", "label": "label"}
    splits = {}
    for role, name in (("train", "train"), ("validation", "validation")):
        rows = [json.loads(line) for line in (MARKER / f"{name}.jsonl").read_text().splitlines()]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({**r, "label": r["idx"] % 3}) + "\n" for r in rows))
        splits[role] = {"file": str(path), "columns": columns}
    task = {"name": "three", "text_fields": ["sentence"], "label_names": ["a", "b", "c"],
            "verbalizers": {"masked_lm": ["no", "yes", "house"], "seq2seq": ["no", "yes", "house"]},
            "splits": splits}
    model, dm = make("masked_lm", task=task)
    got = SkillNeuronCallback().passes(model, dm, ["validation"])["validation"]
    train_acts, _ = brute_force_activations(model, dm, "train", "encoder")
    acts, labels = brute_force_activations(model, dm, "validation", "encoder")
    per_class = [brute_force_statistics(train_acts, acts, (labels == c).astype(int)) for c in range(3)]
    assert got["accuracy"].shape == (3, 2, P, 256)
    for c in range(3):
        np.testing.assert_allclose(got["accuracy"][c].numpy(), per_class[c]["accuracy"], atol=1e-6)
    np.testing.assert_allclose(got["score"].numpy(), np.max([pc["score"] for pc in per_class], axis=0), atol=1e-6)


def test_threshold_pass_reads_train_only_and_evaluation_reads_its_own_split(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    read: dict[str, list[int]] = {}
    original = dm.analysis_loader

    def spy(role, indices, batch_size=None):
        read.setdefault(role, []).extend(indices)
        return original(role, indices, batch_size)

    dm.analysis_loader = spy
    SkillNeuronCallback().passes(model, dm, ["validation", "adv/typos"])
    assert set(read) == {"train", "validation", "adv/typos"}
    assert sorted(read["train"]) == list(range(len(dm.datasets["train"])))  # every train row, once
    assert sorted(read["validation"]) == list(range(len(dm.datasets["validation"])))
    train_text = {tuple(r["input_ids"]) for r in dm.datasets["train"]}
    assert not train_text & {tuple(r["input_ids"]) for r in dm.datasets["validation"]}
    assert SkillNeuronCallback().data_roles("validate") == ("train",)
    assert SkillNeuronCallback(on_validate=False).data_roles("validate") == ()


def test_max_threshold_samples_takes_a_seeded_random_subset(tiny_backbones):
    model, dm = make("masked_lm")
    read: dict[str, list[int]] = {}
    original = dm.analysis_loader
    dm.analysis_loader = lambda role, idx, bs=None: (read.setdefault(role, []).extend(idx), original(role, idx, bs))[1]
    got = SkillNeuronCallback(max_threshold_samples=10, threshold_seed=3).passes(model, dm, ["validation"])
    assert len(read["train"]) == 10 and int(got["validation"]["threshold_examples"]) == 10
    assert sorted(read["train"]) != list(range(10))  # not the first rows: train files are often sorted


def test_shards_partition_rows_without_duplicates():
    rows = list(range(51))
    parts = [shard(rows, r, 4) for r in range(4)]
    assert sorted(sum(parts, [])) == rows and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_validate_writes_files_of_backbone_shape_and_hooks_are_gone(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    callback = SkillNeuronCallback(table_rows=5)
    trainer = validate(model, dm, tmp_path, callback)
    L, N = model.backbone.config.num_hidden_layers, model.backbone.config.intermediate_size
    for name in ("validation", "typos"):
        tensors, meta = load_neuron_file(tmp_path / "skill_neurons" / f"{name}.safetensors")
        for key in ("threshold", "accuracy", "predictivity"):
            assert tensors[key].shape == (L, P, N)
        assert tensors["score"].shape == (L, N)
        assert meta["examples"] == 37 and meta["threshold_examples"] == 48 and meta["task"] == "marker_words"
        assert meta["backbone"] == "tiny-roberta" and meta["split"] in ("validation", "adv/typos")
    clean = load_neuron_file(tmp_path / "skill_neurons" / "validation.safetensors")[0]
    assert trainer.callback_metrics["skill_neurons/validation/best_predictivity"] == pytest.approx(
        float(clean["score"].max()))
    assert 0.0 <= callback.metrics["skill_neurons/typos/overlap@5"] <= 1.0
    rows = (tmp_path / "skill_neurons" / "top_neurons.csv").read_text().splitlines()
    assert rows[0].startswith("rank,layer,unit,best_position,validation_predictivity,typos_predictivity")
    assert len(rows) == 6
    summary = json.loads((tmp_path / "summary.json").read_text())["skill_neurons"]
    assert summary["sets"]["typos"]["examples"] == 37 and summary["shape"] == {"layers": L, "positions": P,
                                                                             "units": N}
    png = (tmp_path / "skill_neurons" / "per_layer_predictivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    hooked = [m for m in model.backbone.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []


def test_balanced_option_stores_balanced_predictivity_beside_the_raw_one(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    plain = SkillNeuronCallback()
    validate(model, dm, tmp_path / "plain", plain)
    balanced = SkillNeuronCallback(balanced=True)
    validate(model, dm, tmp_path / "balanced", balanced)
    raw, _ = load_neuron_file(tmp_path / "plain" / "skill_neurons" / "validation.safetensors")
    assert "balanced_score" not in raw and "balanced_predictivity" not in raw
    tensors, _ = load_neuron_file(tmp_path / "balanced" / "skill_neurons" / "validation.safetensors")
    assert torch.equal(tensors["predictivity"], raw["predictivity"]) and torch.equal(tensors["score"], raw["score"])
    assert torch.equal(tensors["balanced_score"], tensors["balanced_predictivity"].amax(dim=1))
    counts = tensors["class_count"].tolist()
    summary = json.loads((tmp_path / "balanced" / "summary.json").read_text())["skill_neurons"]["sets"]["validation"]
    assert summary["majority_baseline"] == max(counts) / sum(counts)
    assert summary["balanced_top5_mean"] == pytest.approx(
        float(tensors["balanced_score"].topk(13, dim=1).values.mean()))  # ceil(5% of 256) units per layer
    if counts[0] != counts[1]:  # an imbalanced set: balancing changes the numbers
        assert not torch.equal(tensors["balanced_predictivity"], tensors["predictivity"])


def test_test_stage_analyses_the_test_split_and_adversarial_sets(tmp_path, tiny_backbones):
    task = marker_task()
    task["splits"]["test"] = dict(task["splits"]["validation"])
    model, dm = make("masked_lm", task=task)
    callback = SkillNeuronCallback()
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[callback])
    trainer.test(model, datamodule=dm)
    assert sorted(p.name for p in (tmp_path / "skill_neurons").glob("*.safetensors")) == [
        "test.safetensors", "typos.safetensors"]
    assert load_neuron_file(tmp_path / "skill_neurons" / "test.safetensors")[1]["split"] == "test"
    assert "skill_neurons/typos/overlap@1" in trainer.callback_metrics


@pytest.mark.slow
def test_two_processes_count_exactly_what_one_process_counts(tmp_path, tiny_backbones):
    """ddp_spawn with 2 CPU processes (gloo) and an odd number of examples: the same counts, predictivities and
    continuous metrics as 1 process, and the results reach the main process."""
    # One example per forward pass, so that every activation is computed identically in both set-ups
    # (with larger batches the padding, which differs between shards, changes float32 rounding).
    model, dm = make("masked_lm", max_train_samples=47, max_eval_samples=37)
    one = validate(model, dm, tmp_path / "one", SkillNeuronCallback(batch_size=1, correlations=True))
    model, dm = make("masked_lm", max_train_samples=47, max_eval_samples=37)
    two = validate(model, dm, tmp_path / "two", SkillNeuronCallback(batch_size=1, correlations=True),
                   strategy="ddp_spawn", devices=2)
    assert two.world_size == 2
    for name in ("validation", "typos"):
        a, meta_a = load_neuron_file(tmp_path / "one" / "skill_neurons" / f"{name}.safetensors")
        b, meta_b = load_neuron_file(tmp_path / "two" / "skill_neurons" / f"{name}.safetensors")
        assert meta_a["examples"] == meta_b["examples"] == 37 and meta_b["threshold_examples"] == 47
        assert torch.equal(a["class_count"], b["class_count"])
        for key in ("accuracy", "predictivity", "score"):
            assert torch.equal(a[key], b[key]), key
        torch.testing.assert_close(a["threshold"], b["threshold"], rtol=1.2e-7, atol=1e-30)  # float64 sum order
        assert torch.equal(a["activation_probability"], b["activation_probability"])  # integer counts
        for key in ("label_correlation", "margin_correlation", "text_label_correlation", "text_margin_correlation"):
            assert a[key].abs().max() > 0.1, key  # not a comparison of zeros
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)  # float64 sums, summed in another order
    key = "skill_neurons/typos/overlap@10"
    assert float(two.callback_metrics[key]) == pytest.approx(float(one.callback_metrics[key]))


@pytest.mark.subprocess
def test_planted_signal_is_found_and_shuffled_labels_stay_at_chance(tmp_path, tiny_backbones):
    """Fit the quick-start (marker task) briefly; the analysis of the best prompt finds a neuron that predicts
    the label (>= 0.9), while the same validation rows with shuffled labels stay near 0.5."""
    rows = [json.loads(line) for line in (MARKER / "validation.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in rows]
    random.Random(0).shuffle(labels)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps({**r, "label": y}) + "\n" for r, y in zip(rows, labels)))
    extra = json.dumps({"shuffled": {"file": str(shuffled), "columns": {"sentence": "sentence", "label": "label"}}})
    run_cli(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=3",
             f"--data.extra_adversarial={extra}"], cwd=tmp_path)
    run = only_run_dir(tmp_path / "runs")
    result = summary_of(run)["skill_neurons"]
    assert result["prompt_checkpoint"].endswith("checkpoints/best.ckpt") and result["stage"] == "fit"
    metrics = result["metrics"]
    assert metrics["skill_neurons/validation/best_predictivity"] >= 0.9
    assert abs(metrics["skill_neurons/shuffled/top10_mean"] - 0.5) < 0.1
    assert metrics["skill_neurons/shuffled/clean_top1_predictivity"] < 0.65
    assert result["threshold_examples"] == 2000 and result["sets"]["shuffled"]["examples"] == 400
    # W&B (offline) got the summary values, the table and the figure
    offline = next((run / "wandb").glob("offline-run-*"))
    files = offline / "files"
    assert list(files.rglob("*top_neurons*.table.json")) and list(files.rglob("*per_layer_predictivity*.png"))
    # the offline run's record log (uploaded by `wandb sync`) holds the summary keys and the artifact
    records = next(offline.glob("*.wandb")).read_bytes()
    assert b"skill_neurons/shuffled/overlap@15" in records
    # one artifact per configuration (backbone, task, layout); the run is a version of it
    assert b"skill-neurons-tiny-roberta-marker-paper" in records and b"validation.safetensors" in records


# ---------------------------------------------------------------- where neurons live
def test_ffn_sites_of_both_families_and_other_architectures(tiny_backbones):
    from transformers import (
        BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM,
        T5Config, T5ForConditionalGeneration,
    )

    roberta = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P).backbone
    t5 = Seq2SeqPromptTuning(backbone="tiny-t5", prompt_length=P).backbone
    assert [s.where for s in ffn_sites(roberta)] == ["output", "output"] and ffn_shape(roberta) == (2, 256)
    assert ffn_sites(t5)[0].module is t5.encoder.block[0].layer[-1].DenseReluDense.wo
    assert ffn_sites(t5, "decoder")[1].module is t5.decoder.block[1].layer[-1].DenseReluDense.wo
    small = dict(vocab_size=50)
    others = {
        "gated t5": (T5ForConditionalGeneration(T5Config(**small, d_model=16, d_kv=4, d_ff=24, num_layers=3,
                                                         num_heads=2, feed_forward_proj="gated-gelu")), (3, 24)),
        "bert": (BertForMaskedLM(BertConfig(**small, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=20)), (2, 20)),
        "distilbert": (DistilBertForMaskedLM(DistilBertConfig(**small, dim=16, n_layers=2, n_heads=2,
                                                              hidden_dim=28)), (2, 28)),
        "bart": (BartForConditionalGeneration(BartConfig(**small, d_model=16, encoder_layers=2, decoder_layers=1,
                                                         encoder_attention_heads=2, decoder_attention_heads=2,
                                                         encoder_ffn_dim=12, decoder_ffn_dim=12)), (2, 12)),
    }
    for name, (backbone, shape) in others.items():
        assert ffn_shape(backbone) == shape, name
        # the hooked units are exactly the down-projection's input: zeroing them zeroes its contribution
        seen = []
        with ffn_hooks(backbone.eval(), lambda layer, units: seen.append(units.shape)):
            ids = torch.tensor([[3, 4, 5, 6]])
            backbone(input_ids=ids, decoder_input_ids=ids) if backbone.config.is_encoder_decoder else backbone(ids)
        assert [s[-1] for s in seen] == [shape[1]] * shape[0], name


def test_hooks_can_replace_units_for_suppression(tiny_backbones):
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P).eval()
    ids = torch.tensor([[0, 4, 7, 9, 2]])
    plain = model.backbone(input_ids=ids).logits
    with ffn_hooks(model.backbone, lambda layer, units: torch.zeros_like(units)):
        zeroed = model.backbone(input_ids=ids).logits
    assert not torch.allclose(plain, zeroed)
    torch.testing.assert_close(model.backbone(input_ids=ids).logits, plain)  # hooks removed


# ---------------------------------------------------------------- bad input: one clear message each
class NotAPromptModel(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return None


def test_callback_on_a_model_that_is_not_prompt_tuning(tmp_path, tiny_backbones):
    _, dm = make("masked_lm")
    with pytest.raises(SkillNeuronError, match="prompt-tuning module, but the model is a NotAPromptModel"):
        validate(NotAPromptModel(), dm, tmp_path, SkillNeuronCallback())


def test_decoder_analysis_of_an_encoder_only_model(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    with pytest.raises(SkillNeuronError, match="encoder-only: it has no decoder neurons"):
        validate(model, dm, tmp_path, SkillNeuronCallback(part="decoder"))
    with pytest.raises(FFNLookupError, match="encoder-only"):
        ffn_sites(model.backbone, "decoder")
    with pytest.raises(SkillNeuronError, match="use 'encoder' or 'decoder'"):
        SkillNeuronCallback(part="middle")


def test_no_train_split_for_thresholds(tmp_path, tiny_backbones):
    model, dm = make("masked_lm")
    del dm.datasets["train"]
    dm.prepare_data = lambda: None  # a DataModule that does not load the train split
    dm.setup = lambda stage=None: None
    dm.require = lambda *roles: None
    with pytest.raises(SkillNeuronError, match="no train split to compute skill-neuron thresholds"):
        validate(model, dm, tmp_path, SkillNeuronCallback())


def test_single_class_evaluation_set_fails_before_any_run_directory(tmp_path, tiny_backbones):
    proc = cli_in_process(["validate", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK,
                           "--data.max_eval_samples=1"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "evaluation set 'validation' has examples per class [1, 0]" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------- combining seeds
def test_combined_score_is_the_mean_over_runs_of_each_runs_max_over_positions(tmp_path):
    from records.neuron_files import combine_neuron_files, save_neuron_file

    g = torch.Generator().manual_seed(0)
    runs, predictivities = [], []
    for seed in range(3):
        predictivity = 0.5 + 0.5 * torch.rand(2, 3, 5, generator=g)  # (L, P, N)
        run = tmp_path / f"run{seed}"
        save_neuron_file(run / "skill_neurons" / "validation.safetensors",
                         {"predictivity": predictivity, "score": predictivity.amax(dim=1)},
                         {"backbone": "tiny-roberta", "part": "encoder", "task": "marker", "split": "validation"})
        runs.append(run)
        predictivities.append(predictivity)
    combined, meta = combine_neuron_files(runs)
    torch.testing.assert_close(combined, torch.stack([p.amax(dim=1) for p in predictivities]).mean(dim=0))
    assert not torch.allclose(combined, torch.stack(predictivities).mean(dim=0).amax(dim=1))  # order matters
    assert meta["backbone"] == "tiny-roberta" and len(meta["files"]) == 3
    with pytest.raises(SkillNeuronError, match="the run has sets validation"):
        combine_neuron_files(runs, eval_set="adv_sst2")
    save_neuron_file(tmp_path / "other.safetensors", {"score": torch.rand(2, 6)}, {"backbone": "tiny-roberta",
                                                                                  "part": "encoder"})
    with pytest.raises(SkillNeuronError, match="different shapes"):
        combine_neuron_files([*runs, tmp_path / "other.safetensors"])
    # a run analysed under another layout (or at other positions) holds other neurons' statistics
    paper = tmp_path / "paper.safetensors"
    save_neuron_file(paper, {"score": torch.rand(2, 5)}, {"backbone": "tiny-roberta", "part": "encoder",
                                                          "layout": "paper", "analysed_positions": "prompt"})
    with pytest.raises(SkillNeuronError, match=r"different layouts \['paper', 'standard'\]"):
        combine_neuron_files([*runs, paper])
