"""PEFT prompt-tuning adapters out (`export-peft`) and in (`import-peft`), held to PEFT itself.

The references are PEFT's own code (installed through the ``dev`` extra): ``PeftModel.from_pretrained`` loads the
exported folder and its forward gives the logits; a prompt trained with PEFT's ``get_peft_model`` and saved with
its ``save_pretrained`` is imported, and the skill-neuron statistics of the CLI's ``validate`` equal a brute force
over PEFT's forward (one unpadded example per forward, plain hooks on the FFN down-projections, numpy statistics).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from datamodules import PromptDataModule
from datamodules.prompt_datamodule import Collator, pad_id_of
from lightning_modules import CausalLMPromptTuning, MaskedLMPromptTuning, Seq2SeqPromptTuning
from lightning_modules.backbones import build_tiny_preset
from records.neuron_files import load_neuron_file
from records.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, adapter_config, read_adapter, write_adapter
from records.prompt_checkpoint import read_checkpoint, read_prompt
from tests.helpers import QUICK, cli_in_process, only_run_dir, summary_of
from tests.helpers.tiny import brute_force_statistics

peft = pytest.importorskip("peft")  # the dev extra: CI installs it
P = 4
MODELS = {"tiny-gpt2": CausalLMPromptTuning, "tiny-llama": CausalLMPromptTuning, "tiny-t5": Seq2SeqPromptTuning,
          "tiny-roberta": MaskedLMPromptTuning}


@pytest.fixture(scope="module")
def presets(tiny_backbones):
    return {name: build_tiny_preset(name) for name in MODELS}


def module_and_data(backbone: str, prompt_length: int = P, layout: str = "standard"):
    """Our module with a prompt drawn away from the vocabulary, and the marker task's data for it."""
    torch.manual_seed(1)
    model = MODELS[backbone](backbone=backbone, prompt_length=prompt_length, layout=layout).eval()
    with torch.no_grad():
        model.prompt.weight.normal_(0.0, 0.5)
    dm = PromptDataModule(task="marker", backbone=backbone, prompt_length=prompt_length, max_train_samples=48,
                          max_eval_samples=37, layout=layout)
    dm.prepare_data()
    dm.setup("fit")
    model.label_token_ids = torch.tensor(dm.label_token_ids)
    return model, dm


def save_like_fit(model, path):
    """The checkpoint a fit writes: the module's own on_save_checkpoint keeps the prompt and adds the metadata."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": "2"}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def peft_base(backbone: str, presets):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    loader = AutoModelForSeq2SeqLM if backbone == "tiny-t5" else AutoModelForCausalLM
    return loader.from_pretrained(presets[backbone]).eval()


def peft_label_logits(peft_model, batch, label_ids, causal: bool) -> torch.Tensor:
    """(B, C) PEFT's forward read where ours reads the label: a causal LM's last real position, T5's first step."""
    if causal:
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        prompt_length = logits.shape[1] - batch["input_ids"].shape[1]
        last = prompt_length + batch["attention_mask"].sum(dim=1) - 1  # right padding: the prompt, then the text
        return logits[torch.arange(len(last)), last][:, label_ids]
    start = torch.full((batch["input_ids"].shape[0], 1), peft_model.get_base_model().config.decoder_start_token_id)
    return peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      decoder_input_ids=start).logits[:, 0, label_ids]


@pytest.mark.parametrize("backbone, layout", [("tiny-gpt2", "standard"), ("tiny-llama", "standard"),
                                              ("tiny-t5", "standard"), ("tiny-t5", "paper")])
def test_export_loads_in_peft_with_our_logits_and_import_gives_the_prompt_back_bit_identical(tmp_path, presets,
                                                                                             backbone, layout):
    model, dm = module_and_data(backbone, layout=layout)
    run = tmp_path / "runs" / "fit-run"
    (run / "checkpoints").mkdir(parents=True)
    save_like_fit(model, run / "checkpoints" / "best.ckpt")
    adapter = tmp_path / "adapter"
    exported = cli_in_process(["export-peft", str(run), "--out", str(adapter)], tmp_path, check=True)  # its best
    assert ("P1's per-task text format" in exported.stdout) == (layout == "paper")
    again = cli_in_process(["export-peft", str(run), "--out", str(adapter)], tmp_path)  # never over an adapter
    assert again.returncode == 2 and "already holds an adapter — pass --force" in again.stderr
    peft_model = peft.PeftModel.from_pretrained(peft_base(backbone, presets), adapter).eval()
    assert peft_model.peft_config["default"].num_virtual_tokens == P
    rows = [dm.datasets["validation"][i] for i in range(7)]
    batch = Collator(pad_id_of(dm.tokenizer))(rows)  # the project's template (paper: P1's format), right padding
    assert (batch["attention_mask"] == 0).any()  # texts of several lengths: padding is part of the check
    with torch.no_grad():
        ours = model(batch)
        theirs = peft_label_logits(peft_model, batch, model.label_token_ids, backbone != "tiny-t5")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    # PEFT's own save of what it loaded holds the same prompt, and import-peft gives it back bit for bit
    peft_model.save_pretrained(tmp_path / "resaved")
    assert torch.equal(read_adapter(tmp_path / "resaved").prompt, model.prompt.weight.detach())
    out = tmp_path / "imported" / "prompt.ckpt"
    cli_in_process(["import-peft", str(adapter), "--task", "marker", "--out", str(out), "--layout", layout],
                   tmp_path, check=True)
    imported = read_prompt(out)
    assert imported.dtype == torch.float32 and torch.equal(imported, model.prompt.weight.detach())
    hparams = read_checkpoint(out)["hyper_parameters"]
    assert (hparams["backbone"], hparams["prompt_length"], hparams["layout"]) == (backbone, P, layout)
    config = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert config["model"]["class_path"].endswith(type(model).__name__) and config["data"]["task"] == "marker"


def train_with_peft(presets, prompt_length: int, steps: int = 12):
    """A prompt trained by PEFT itself on tiny-gpt2: its forward, its parameters, cross-entropy of the label word
    at the last position, AdamW — nothing of this project's module."""
    _, dm = module_and_data("tiny-gpt2", prompt_length)
    torch.manual_seed(0)
    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=prompt_length)
    model = peft.get_peft_model(peft_base("tiny-gpt2", presets), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    label_ids = torch.tensor(dm.label_token_ids)
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=16, collate_fn=Collator(pad_id_of(dm.tokenizer)))
    for _ in range(steps // len(loader)):
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(peft_label_logits(model, batch, label_ids, True), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), dm


def peft_brute_force(peft_model, dm, role: str):
    """(n, L, 1, N) FFN units at each example's last position from PEFT's forward, one unpadded example at a time;
    labels (n,) and PEFT's predictions (n,)."""
    blocks = peft_model.get_base_model().transformer.h
    seen: list[torch.Tensor] = []
    hooks = [b.mlp.c_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, -1].double().clone()))
             for b in blocks]
    label_ids = torch.tensor(dm.label_token_ids)
    acts, labels, predictions = [], [], []
    try:
        with torch.no_grad():
            for row in dm.datasets[role]:
                seen.clear()
                ids = torch.tensor([row["input_ids"]])
                logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, label_ids]
                acts.append(torch.stack(seen)[:, None].numpy())  # (L, 1, N)
                labels.append(row["label"])
                predictions.append(int(logits.argmax()))
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(acts), np.array(labels), np.array(predictions)


@pytest.mark.slow  # 50 s on the shared 2-core machine: a PEFT training, then validate through the CLI
def test_a_prompt_trained_with_peft_is_imported_and_its_skill_neurons_equal_the_brute_force(tmp_path, presets):
    length = 5  # not the project's default: any num_virtual_tokens is read
    peft_model, dm = train_with_peft(presets, length)
    adapter = tmp_path / "peft-adapter"
    peft_model.save_pretrained(adapter)  # PEFT's own files; base_model_name_or_path is the preset's folder
    out = tmp_path / "imported.ckpt"
    cli_in_process(["import-peft", str(adapter), "--task", "marker", "--out", str(out)], tmp_path, check=True)
    cli_in_process(["validate", "--config", str(out.with_suffix(".yaml")), f"--ckpt_path={out}", *QUICK,
                    "--data.max_train_samples=48", "--data.max_eval_samples=37", f"--runs_dir={tmp_path / 'runs'}"],
                   tmp_path, check=True)
    run = only_run_dir(tmp_path / "runs")
    train_acts, _, _ = peft_brute_force(peft_model, dm, "train")
    eval_sets = [role for role in dm.datasets if role != "train"]
    assert eval_sets == ["validation", "adv/marker_typo"]
    for role in eval_sets:
        acts, labels, predictions = peft_brute_force(peft_model, dm, role)
        want = brute_force_statistics(train_acts, acts, labels)
        got, meta = load_neuron_file(run / "skill_neurons" / f"{role.removeprefix('adv/')}.safetensors")
        assert meta["family"] == "causal_lm" and meta["analysed_positions"] == "last"
        np.testing.assert_allclose(got["threshold"].numpy(), want["threshold"], rtol=1e-5, atol=1e-6)
        for key in ("accuracy", "predictivity", "score"):
            np.testing.assert_allclose(got[key].numpy(), want[key], atol=1e-6, err_msg=f"{role} {key}")
        if role == "validation":  # the run's accuracy is PEFT's own on the same rows
            accuracy = summary_of(run)["validate_metrics"]["val/acc"]
            assert accuracy == pytest.approx(float((predictions == labels).mean()), abs=1e-6)
    assert read_checkpoint(out)["skill_neurons"]["imported_from"]["stored_shape"] == [length, 64]


@pytest.mark.parametrize("kind", ["LoraConfig", "PrefixTuningConfig", "PromptEncoderConfig"])
def test_adapters_that_are_not_prompt_tuning_are_refused_naming_what_is_supported(tmp_path, presets, kind):
    options = {"LoraConfig": dict(target_modules=["c_attn"]), "PrefixTuningConfig": dict(num_virtual_tokens=3),
               "PromptEncoderConfig": dict(num_virtual_tokens=3, encoder_hidden_size=16)}[kind]
    config = getattr(peft, kind)(task_type=peft.TaskType.CAUSAL_LM, **options)
    peft.get_peft_model(peft_base("tiny-gpt2", presets), config).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out.ckpt"
    result = cli_in_process(["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--out", str(out)],
                            tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    peft_type = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())["peft_type"]
    assert f"is a {peft_type} adapter, not prompt tuning" in result.stderr and "PROMPT_TUNING" in result.stderr
    assert not out.exists() and not out.with_suffix(".yaml").exists()


def test_a_roberta_paper_prompt_is_not_exported_and_says_why(tmp_path, presets):
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P, layout="paper")
    ckpt = save_like_fit(model, tmp_path / "paper.ckpt")
    result = cli_in_process(["export-peft", str(ckpt), "--out", str(tmp_path / "adapter")], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "layout paper" in result.stderr and "<mask> in prompt slot 0" in result.stderr
    assert "PEFT has no masked-LM task type" in result.stderr
    assert not (tmp_path / "adapter" / WEIGHTS_FILE).exists()


@pytest.mark.parametrize("trained_on, given", [("tiny-gpt2", "tiny-llama"), ("tiny-t5", "tiny-gpt2")])
def test_a_backbone_that_is_not_the_adapters_base_model_is_refused(tmp_path, presets, trained_on, given):
    task_type = peft.TaskType.SEQ_2_SEQ_LM if trained_on == "tiny-t5" else peft.TaskType.CAUSAL_LM
    config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=3)
    peft.get_peft_model(peft_base(trained_on, presets), config).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out.ckpt"
    args = ["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--out", str(out)]
    result = cli_in_process([*args, "--backbone", given], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "the adapter was trained on" in result.stderr and f"--backbone {given!r} is another model" in result.stderr
    assert not out.exists()
    # its own base model (recorded as the preset's folder) is accepted, by name too
    cli_in_process([*args, "--backbone", trained_on], tmp_path, check=True)
    assert read_checkpoint(out)["hyper_parameters"]["backbone"] == trained_on


def test_a_t5_adapter_with_peft_default_decoder_rows_imports_the_rows_its_forward_reads(tmp_path, presets):
    """PEFT's SEQ_2_SEQ_LM default stores 2P rows (num_transformer_submodules 2); its prompt-tuning forward reads the
    first P only, so the import keeps those and our module's logits equal PEFT's."""
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3)
    torch.manual_seed(2)
    peft_model = peft.get_peft_model(peft_base("tiny-t5", presets), config).eval()
    stored = peft_model.prompt_encoder["default"].embedding.weight
    assert stored.shape == (6, 64)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "t5.ckpt"
    cli_in_process(["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--out", str(out)], tmp_path,
                   check=True)
    assert torch.equal(read_prompt(out), stored[:3].detach())
    model, dm = module_and_data("tiny-t5", prompt_length=3)
    model.load_state_dict(read_checkpoint(out)["state_dict"], strict=False)
    batch = Collator(pad_id_of(dm.tokenizer))([dm.datasets["validation"][i] for i in range(7)])
    with torch.no_grad():
        torch.testing.assert_close(peft_label_logits(peft_model, batch, model.label_token_ids, causal=False),
                                   model(batch), rtol=0, atol=1e-6)


def test_a_base_model_that_cannot_be_read_here_needs_backbone_and_is_then_checked_by_family_and_width(tmp_path,
                                                                                                       presets):
    """An adapter of a hub model this offline machine does not have: without --backbone the import is refused
    naming it; with one, the family and the width are checked (no architecture to compare)."""
    prompt = torch.randn(6, 64)
    write_adapter(tmp_path / "adapter", prompt, adapter_config("causal_lm", 6, 64, "some-org/not-here", 2, 4))
    args = ["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--out", str(tmp_path / "a.ckpt")]
    refused = cli_in_process(args, tmp_path)
    assert refused.returncode == 2 and "pass --backbone NAME for a local copy" in refused.stderr, refused.stderr
    assert not (tmp_path / "a.ckpt").exists()
    wrong_family = cli_in_process([*args, "--backbone", "tiny-t5"], tmp_path)
    assert wrong_family.returncode == 2 and "is a CAUSAL_LM prompt (causal_lm) but backbone 'tiny-t5'" in \
        wrong_family.stderr, wrong_family.stderr
    cli_in_process([*args, "--backbone", "tiny-gpt2"], tmp_path, check=True)
    assert torch.equal(read_prompt(tmp_path / "a.ckpt"), prompt)


def test_verbalizers_go_into_the_configs_task_and_everything_else_of_the_task_stays(tmp_path, presets):
    import dataclasses

    from datamodules.tasks import TASKS, get_task

    write_adapter(tmp_path / "adapter", torch.randn(2, 64), adapter_config("causal_lm", 2, 64, "tiny-gpt2", 2, 4))
    out = tmp_path / "a.ckpt"
    cli_in_process(["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--verbalizers", "nope", "yess",
                    "--out", str(out)], tmp_path, check=True)
    declared = get_task(yaml.safe_load(out.with_suffix(".yaml").read_text())["data"]["task"])
    marker = TASKS["marker"]
    assert declared == dataclasses.replace(marker, verbalizers={**marker.verbalizers, "causal_lm": ("nope", "yess")})
    assert read_checkpoint(out)["skill_neurons"]["imported_from"]["verbalizers"] == ["nope", "yess"]


@pytest.mark.parametrize("task_type", ["FEATURE_EXTRACTION", "SEQ_CLS"])
def test_prompt_tuning_of_a_task_type_without_a_family_here_is_refused(tmp_path, task_type):
    config = {**adapter_config("causal_lm", 2, 64, "tiny-roberta", 2, 4), "task_type": task_type}
    write_adapter(tmp_path / "adapter", torch.randn(2, 64), config)
    result = cli_in_process(["import-peft", str(tmp_path / "adapter"), "--task", "marker", "--out",
                             str(tmp_path / "a.ckpt")], tmp_path)
    assert result.returncode == 2 and f"of task type {task_type}, which has no family here" in result.stderr
    assert "PEFT has no masked-LM task type" in result.stderr and not (tmp_path / "a.ckpt").exists()
