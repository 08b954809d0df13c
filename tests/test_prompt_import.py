"""`skill-neurons import-prompt`: P1's published prompts (synthetic files in P1's layout) as prompt checkpoints."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import lightning
import pytest
import torch
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, summary_of
from torch import nn

from skill_neurons.import_prompt import P1_TASKS, PromptImportError, import_prompt, main

WIDTH = 64  # tiny-roberta hidden_size, tiny-t5 d_model (P1's real prompts: 768)


class NotATensor:
    """Any class: unpickling it needs code, which weights_only=True refuses."""

    def __init__(self):
        self.weight = torch.zeros(100, WIDTH)


def publish(root: Path, seed: str, folder: str, rows: int = 100, width: int = WIDTH,
            obj=None) -> tuple[Path, torch.Tensor]:
    """Write ``continuous_prompts/seed_<seed>/<folder>/task_prompt`` as P1 does: torch.save of one tensor."""
    path = root / "continuous_prompts" / f"seed_{seed}" / folder / "task_prompt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.randn(rows, width, generator=torch.Generator().manual_seed(zlib.crc32(f"{seed}/{folder}".encode())))
    torch.save(tensor if obj is None else obj, path)
    return path, tensor


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def published(tmp_path, tiny_backbones):
    return tmp_path


def test_paper_layout_keeps_all_100_rows_and_records_the_layout(published):
    """P1's forward overwrites slot 0 with <mask>; under layout paper the module does the same, so every row
    is imported and row 0 is never read (test_paper_layout.py proves the forward equals P1's)."""
    source, rows = publish(published, "33", "SST2PromptRoberta")
    out = published / "sst2-paper.ckpt"
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(out)]) == 0
    checkpoint = load(out)
    assert torch.equal(checkpoint["state_dict"]["prompt.weight"], rows)
    assert checkpoint["hyper_parameters"]["layout"] == "paper" and checkpoint["hyper_parameters"]["prompt_length"] == 100
    assert checkpoint["skill_neurons"]["layout"] == "paper"
    assert checkpoint["skill_neurons"]["imported_from"]["mask_slot"] == "keep"
    with pytest.raises(PromptImportError, match="--layout paper keeps every row"):
        import_prompt(source, published / "drop.ckpt", "tiny-roberta", mask_slot="drop")


def test_drop_mask_slot_imports_rows_1_to_99_into_a_weights_only_checkpoint(published):
    source, rows = publish(published, "33", "SST2PromptRoberta")
    out = published / "sst2.ckpt"
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(out), "--layout", "standard"]) == 0
    checkpoint = load(out)  # weights_only=True: nothing but tensors and plain containers
    prompt = checkpoint["state_dict"]["prompt.weight"]
    assert prompt.dtype == torch.float32 and prompt.shape == (99, WIDTH)
    assert torch.equal(prompt, rows[1:])  # P1's slot 0 is overwritten by <mask> there: dropped
    meta = checkpoint["skill_neurons"]
    assert meta["backbone"] == "tiny-roberta" and meta["family"] == "masked_lm" and meta["prompt_shape"] == [99, WIDTH]
    imported = meta["imported_from"]
    assert imported["seed"] == 33 and imported["task"] == "sst2" and imported["p1_folder"] == "SST2PromptRoberta"
    assert imported["mask_slot"] == "drop" and imported["rows"] == [1, 100] and imported["source_shape"] == [100, WIDTH]
    assert imported["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert imported["source"] == str(source.resolve())
    hparams = checkpoint["hyper_parameters"]
    assert hparams["_class_path"] == "lightning_modules.MaskedLMPromptTuning"
    assert hparams["backbone"] == "tiny-roberta" and hparams["prompt_length"] == 99 and hparams["layout"] == "standard"
    assert checkpoint["pytorch-lightning_version"] == lightning.__version__
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 0


def test_keep_mask_slot_imports_all_100_rows(published):
    source, rows = publish(published, "34", "QNLIPromptRoberta")
    result = import_prompt(source, published / "qnli.ckpt", "tiny-roberta", mask_slot="keep")
    assert result.prompt_shape == (100, WIDTH)
    assert torch.equal(load(result.out)["state_dict"]["prompt.weight"], rows)
    assert result.imported_from["rows"] == [0, 100] and result.imported_from["task"] == "qnli"


def test_mask_slot_is_spelled_with_an_underscore_and_the_old_spelling_still_works(published, capsys):
    source, rows = publish(published, "34", "QNLIPromptRoberta")
    standard = ["--backbone", "tiny-roberta", "--layout", "standard"]
    assert main([str(source), *standard, "--mask_slot", "keep", "--out", str(published / "new.ckpt")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([str(source), *standard, "--mask-slot=keep", "--out", str(published / "old.ckpt")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "skill-neurons import-prompt: deprecated spelling: --mask-slot -> --mask_slot (the project's flags use "
        "underscores, as LightningCLI's do; the old spelling will stop working in the next release)"]
    for name in ("new", "old"):  # keep: all 100 rows (the default for layout standard drops row 0)
        assert torch.equal(load(published / f"{name}.ckpt")["state_dict"]["prompt.weight"], rows), name


def test_t5_prompts_keep_every_row_and_refuse_dropping_a_mask_slot(published):
    source, rows = publish(published, "35", "MRPCPromptT5")
    result = import_prompt(source, published / "t5.ckpt", "tiny-t5")
    checkpoint = load(result.out)
    assert torch.equal(checkpoint["state_dict"]["prompt.weight"], rows)  # P1's T5 uses all 100 rows
    assert checkpoint["hyper_parameters"]["_class_path"] == "lightning_modules.Seq2SeqPromptTuning"
    assert checkpoint["skill_neurons"]["family"] == "seq2seq"
    with pytest.raises(PromptImportError, match="no <mask> slot"):
        import_prompt(source, published / "t5_drop.ckpt", "tiny-t5", mask_slot="drop")
    with pytest.raises(PromptImportError, match="seq2seq prompt but backbone 'tiny-roberta' is a masked_lm"):
        import_prompt(source, published / "t5_on_roberta.ckpt", "tiny-roberta")


def test_epoch_checkpoint_dicts_parameters_and_batched_prompts_are_accepted(published):
    rows = torch.randn(100, WIDTH)
    # <epoch>_task_prompt.pkl beside task_prompt: the prompt under "model" next to the AdamW state (more tensors).
    epoch_file = published / "continuous_prompts" / "seed_33" / "SST2PromptRoberta" / "74_task_prompt.pkl"
    epoch_file.parent.mkdir(parents=True)
    torch.save({"model": rows, "optimizer": {"state": {0: {"step": 7, "exp_avg": torch.zeros(100, WIDTH)}},
                                             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
                "trained_epoch": 74, "global_step": 1000}, epoch_file)
    result = import_prompt(epoch_file, published / "a.ckpt", "tiny-roberta", layout="standard")
    assert result.imported_from["stored_as"] == "dict[model]" and result.imported_from["seed"] == 33
    assert torch.equal(load(result.out)["state_dict"]["prompt.weight"], rows[1:])
    parameter = published / "parameter.pt"
    torch.save(nn.Parameter(rows.clone()), parameter)  # P2-style (1, P, H) and Parameters load as tensors too
    assert torch.equal(load(import_prompt(parameter, published / "b.ckpt", "tiny-roberta", mask_slot="keep").out)
                       ["state_dict"]["prompt.weight"], rows)
    batched = published / "p2.pt"
    torch.save({"prompt": rows[None, :16], "pos": [10, 20]}, batched)
    result = import_prompt(batched, published / "c.ckpt", "tiny-roberta", mask_slot="keep", task="sst2", seed=7)
    assert result.prompt_shape == (16, WIDTH) and result.imported_from["seed"] == 7
    two = published / "two.pt"
    torch.save({"a": rows, "b": rows}, two)
    with pytest.raises(PromptImportError, match="--key"):
        import_prompt(two, published / "d.ckpt", "tiny-roberta")
    assert import_prompt(two, published / "d.ckpt", "tiny-roberta", key="b", layout="standard").prompt_shape == (99, WIDTH)


def test_a_pickle_of_an_arbitrary_object_is_refused_with_a_clear_message(published, capsys):
    source, _ = publish(published, "33", "SST2PromptRoberta", obj=NotATensor())
    out = published / "evil.ckpt"
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "refused" in message and "weights_only=True" in message and "NotATensor" in message
    assert "would run whatever code" in message and "torch.save(tensor)" in message
    assert not out.exists()
    garbage = published / "garbage"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PromptImportError, match="cannot read .* as a torch.save file"):
        import_prompt(garbage, published / "g.ckpt", "tiny-roberta")


def test_a_prompt_of_another_width_is_refused(published, capsys):
    source, _ = publish(published, "33", "SST2PromptRoberta", width=768)  # P1's real width on a 64-wide backbone
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(published / "w.ckpt")]) == 2
    message = capsys.readouterr().err
    assert "768 wide" in message and "'tiny-roberta'" in message and "64 dimensions" in message
    assert not (published / "w.ckpt").exists()


def test_existing_outputs_need_force(published):
    source, _ = publish(published, "33", "SST2PromptRoberta")
    out = published / "x.ckpt"
    import_prompt(source, out, "tiny-roberta")
    with pytest.raises(PromptImportError, match="--force"):
        import_prompt(source, out, "tiny-roberta", mask_slot="keep")
    import_prompt(source, out, "tiny-roberta", mask_slot="keep", force=True)
    assert load(out)["state_dict"]["prompt.weight"].shape == (100, WIDTH)


def test_directory_mode_imports_two_seeds_by_two_tasks_per_model(published, capsys):
    sources = {(seed, folder): publish(published, seed, folder)[1]
               for seed in ("33", "34") for folder in ("SST2PromptRoberta", "movierationalesPromptRoberta")}
    sources[("33", "ethicsjusticePromptT5")] = publish(published, "33", "ethicsjusticePromptT5")[1]
    publish(published, "33", "laptopPromptRoberta")  # a P1 task that is not built in
    publish(published, "su", "IMDBPromptRoberta")  # seed_su: Su et al.'s prompts, no numeric seed
    publish(published, "33", "restaurantPromptRoberta_proj")  # a projected prompt: not P1's layout, skipped
    out = published / "imported"
    assert main([str(published), "--backbone", "Roberta=tiny-roberta", "--backbone", "T5=tiny-t5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for (seed, folder), rows in sources.items():
        task, model = {"SST2PromptRoberta": ("sst2", "roberta"), "movierationalesPromptRoberta":
                       ("movie_rationales", "roberta"), "ethicsjusticePromptT5": ("ethics_justice", "t5")}[folder]
        checkpoint = load(out / model / task / f"seed{seed}.ckpt")
        assert torch.equal(checkpoint["state_dict"]["prompt.weight"], rows)  # layout paper: every row
        assert checkpoint["skill_neurons"]["imported_from"]["seed"] == int(seed)
        assert checkpoint["skill_neurons"]["imported_from"]["task"] == task
        assert any(line.split()[:3] == [seed, folder, task] for line in printed.splitlines())
    su = load(out / "roberta" / "imdb" / "seedsu.ckpt")["skill_neurons"]["imported_from"]
    assert su["seed"] is None and su["seed_folder"] == "seed_su"
    listed = [line for line in printed.splitlines() if line.startswith("not built-in tasks")]
    assert len(listed) == 1 and "laptop" in listed[0] and "ethics" not in listed[0]
    assert "skipped" in printed and "restaurantPromptRoberta_proj" in printed
    assert "imported 7 prompt(s)" in printed
    assert len(list(out.rglob("*.ckpt"))) == 7


def test_p1_task_names_map_to_built_in_tasks():
    from datamodules.tasks import TASKS

    assert set(P1_TASKS.values()) <= set(TASKS)
    assert P1_TASKS["movierationales"] == "movie_rationales"


def test_imported_prompt_is_the_one_the_module_loads(published):
    from lightning_modules import MaskedLMPromptTuning

    source, rows = publish(published, "33", "SST2PromptRoberta")
    checkpoint = load(import_prompt(source, published / "m.ckpt", "tiny-roberta", layout="standard").out)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = MaskedLMPromptTuning(**hparams)
    module.on_load_checkpoint(checkpoint)  # the prompt-shape check a real load runs
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    assert torch.equal(module.prompt.weight.detach(), rows[1:])


def test_validate_through_the_cli_accepts_the_imported_checkpoint(published):
    source, _ = publish(published, "33", "SST2PromptRoberta")
    ckpt = published / "imported" / "sst2_seed33.ckpt"
    assert main([str(source), "--backbone", "tiny-roberta", "--out", str(ckpt)]) == 0
    cli_in_process(["validate", "--config", str(ROOT / "configs/quickstart.yaml"), *QUICK,
                    "--model.prompt_length=99", "--model.layout=standard",
                    "--data.max_train_samples=64", "--data.max_eval_samples=64", f"--ckpt_path={ckpt}",
                    f"--runs_dir={published / 'runs'}"], cwd=published, check=True)
    summary = summary_of(only_run_dir(published / "runs"))
    assert summary["ckpt_path"] == str(ckpt)
    assert 0.0 <= summary["validate_metrics"]["val/acc"] <= 1.0
    # the checkpoint's hyper-parameters (P1's 100 rows, layout paper) win over the command line, data linked
    assert summary["config"]["model.prompt_length"] == summary["config"]["data.prompt_length"] == 100
    assert summary["config"]["model.layout"] == summary["config"]["data.layout"] == "paper"
    assert summary["settings"]["layout"] == "paper"
