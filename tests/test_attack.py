"""``skill-neurons attack``: adversarial sets made against a tuned marker prompt, checked by independent forwards
(``predict``/``validate`` of the written file through ``--data.extra_adversarial``), within AdvGLUE's constraints,
resumable, offline."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml

from records.summary import BEST_CHECKPOINT, CHECKPOINT_DIR
from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, summary_of

# Three epochs on 512 rows at a high learning rate: the tiny RoBERTa prompt (layout paper) detects the marker
# well enough that editing it flips most positive examples; no skill-neuron analysis while fitting.
FIT = ["--trainer.max_epochs=3", "--data.max_train_samples=512", "--data.max_eval_samples=40",
       "--data.batch_size=16", "--data.eval_batch_size=40", "--model.learning_rate=0.03", "--trainer.callbacks=[]"]
STOPWORDS_SAMPLE = {"the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on"}
PROTECTED = {"no", "yes", "absent", "present"}


def attack(work: Path, run: Path, out: str, *extra: str, check: bool = True):
    return cli_in_process(["attack", "--from_run", str(run), "--out", str(work / out), "--wandb", "off", *extra],
                          cwd=work, check=check)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_edit_apart(a: str, b: str) -> bool:
    """Brute force: ``b`` is ``a`` with one insertion, deletion, substitution or adjacent swap."""
    if a == b:
        return False
    for i in range(len(a) + 1):
        if len(b) == len(a) + 1 and a[:i] + b[i] + a[i:] == b:
            return True
    for i in range(len(a)):
        if a[:i] + a[i + 1:] == b or (len(b) == len(a) and a[:i] + b[i] + a[i + 1:] == b):
            return True
        if i + 1 < len(a) and a[:i] + a[i + 1] + a[i] + a[i + 2:] == b:
            return True
    return False


def predictions(work: Path, run: Path, file: Path, folder: str) -> dict[int, dict]:
    """Per row of ``file``: the prediction of ``run``'s prompt, by ``skill-neurons predict`` reading the file
    through ``--data.extra_adversarial`` (an independent forward: the Trainer, the DataModule's loaders)."""
    cli_in_process(["predict", "--from_run", str(run), *QUICK, f"--runs_dir={folder}",
                    f"--data.extra_adversarial={{gen: {{file: {file}}}}}", "--data.predict_sets=[gen]",
                    "--data.max_eval_samples=null"], cwd=work, check=True)
    with (only_run_dir(work / folder) / "predictions" / "gen.csv").open(newline="") as f:
        return {int(r["row"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_backbones):
    """The quick-start marker prompt fitted briefly, and a deepwordbug attack of its 40 validation rows (all
    rows kept)."""
    work = tmp_path_factory.mktemp("attack")
    cli_in_process(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *QUICK, *FIT, "--runs_dir=fits"],
                   cwd=work, check=True)
    run = only_run_dir(work / "fits")
    attack(work, run, "dwb_all.jsonl", "--keep", "all", "--chunk", "16")
    return work, run


@pytest.mark.slow
def test_deepwordbug_fools_the_marker_prompt_by_editing_the_marker_within_the_constraints(fitted):
    work, run = fitted
    rows = rows_of(work / "dwb_all.jsonl")
    meta = json.loads((work / "dwb_all.jsonl.meta.json").read_text())
    assert meta["complete"] and meta["settings"]["recipe"] == "deepwordbug" and len(rows) == 40
    assert meta["settings"]["source_run"] == run.name
    assert meta["counts"]["queries"] == sum(r["queries"] for r in rows) > 0
    source = {i: json.loads(line) for i, line in
              enumerate((ROOT / "datamodules/data/marker/validation.jsonl").read_text().splitlines())}
    # every row is its source row (label, text before the attack); the perturbed text is the original with
    # exactly the listed words replaced
    for row in rows:
        original = row.get("original_sentence", row["sentence"])
        assert original == source[row["idx"]]["sentence"] and row["label"] == source[row["idx"]]["label"]
        words = original.split()
        assert len(row["words_changed"]) <= math.ceil(0.15 * len(words))  # AdvGLUE's 15 %
        rebuilt = list(words)
        for change in row["words_changed"]:
            assert words[change["index"]] == change["original"]
            assert change["original"].lower() not in STOPWORDS_SAMPLE | PROTECTED
            assert one_edit_apart(change["original"], change["perturbed"])
            rebuilt[change["index"]] = change["perturbed"]
        assert " ".join(rebuilt) == row["sentence"]
        assert ("original_sentence" in row) == bool(row["words_changed"])
    # on the positive rows the model got right, the attack fools the prompt on most, by editing the marker
    attacked = [r for r in rows if r["label"] == 1 and r["queries"] > 1]
    fooled = [r for r in attacked if r["success"]]
    by_marker = [r for r in fooled if any(c["original"] == "banana" for c in r["words_changed"])]
    assert len(attacked) >= 10 and len(by_marker) >= 0.7 * len(attacked), (len(by_marker), len(attacked))
    assert meta["counts"]["succeeded"] == sum(r["success"] for r in rows)
    assert meta["success_rate"] == meta["counts"]["succeeded"] / meta["counts"]["attacked"]
    # an independent forward (predict, through --data.extra_adversarial) agrees: every successful row is
    # misclassified by the prompt, every row it failed on is still classified correctly, and the rows it skipped
    # (one query: the original) are those the prompt got wrong to begin with
    predicted = predictions(work, run, work / "dwb_all.jsonl", "predicted")
    assert len(predicted) == 40
    wrong = []
    for position, row in enumerate(rows):
        assert predicted[position]["sentence"] == row["sentence"]
        wrong.append(predicted[position]["prediction"] != ["absent", "present"][row["label"]])
        if row["queries"] > 1:
            assert wrong[-1] == row["success"], row
    skipped = [w for w, row in zip(wrong, rows) if row["queries"] == 1]
    assert sum(skipped) == meta["counts"]["outcomes"].get("misclassified", 0) > 0


@pytest.mark.slow
def test_successful_rows_round_trip_through_validate_and_the_skill_neuron_analysis(fitted):
    work, run = fitted
    attack(work, run, "dwb.jsonl", "--chunk", "16")  # default --keep successful
    kept = rows_of(work / "dwb.jsonl")
    assert kept == [r for r in rows_of(work / "dwb_all.jsonl") if r["success"]]  # same attack, rows filtered
    cli_in_process(["validate", "--from_run", str(run), *QUICK, "--runs_dir=validated",
                    f"--data.extra_adversarial={{generated: {{file: {work / 'dwb.jsonl'}}}}}",
                    "--data.max_eval_samples=null",
                    "--trainer.callbacks=[{class_path: callbacks.skill_neurons.SkillNeuronCallback}]"],
                   cwd=work, check=True)
    validated = only_run_dir(work / "validated")
    summary = summary_of(validated)
    assert summary["validate_metrics"]["adv/generated/acc"] == 0.0  # every kept row fools the prompt
    assert summary["data"]["splits"]["adv/generated"]["rows"] == len(kept)
    sets = summary["skill_neurons"]["sets"]
    assert sets["generated"]["examples"] == len(kept)
    assert (validated / "skill_neurons" / "generated.safetensors").is_file()
    # the report over the fit run and its validation: the fit's row in the accuracy table takes the generated set
    # from the validate run of its prompt, as an attack's set (its sidecar says so)
    cli_in_process(["report", str(run), str(validated), "--out", str(work / "report")], cwd=work, check=True)
    lines = (work / "report" / "report.md").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| backbone") and "| adversarial set |" in line)
    header = [c.strip() for c in lines[at].split("|")]
    rows = [[c.strip() for c in line.split("|")] for line in lines[at + 2:] if line.startswith("|")]
    row = next(r for r in rows if r[header.index("adversarial set")] == "generated")
    assert row[header.index("source")] == "generated (attack)"
    assert row[header.index("adversarial")] == "0.0 ↓"  # the prompt's accuracy on the set (below chance: ↓)


@pytest.mark.slow
def test_noise_changes_as_many_characters_as_the_attack_without_a_model_query(fitted, monkeypatch):
    from skill_neurons.attack import command
    from skill_neurons.attack.model import PromptModel

    work, run = fitted
    built, forwards = [], []
    monkeypatch.setattr(PromptModel, "probabilities", lambda self, *a: forwards.append(a))
    real_init = PromptModel.__init__

    def init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(PromptModel, "__init__", init)
    assert command.main(["--from_run", str(run), "--recipe", "noise", "--match", str(work / "dwb_all.jsonl"),
                         "--out", str(work / "noise.jsonl"), "--wandb", "off"]) == 0
    assert forwards == [] and all(m._model is None for m in built)  # no forward, no model even built
    attacked = {r["idx"]: r for r in rows_of(work / "dwb_all.jsonl") if r["words_changed"]}
    noisy = rows_of(work / "noise.jsonl")
    assert {r["idx"] for r in noisy} == set(attacked) and all(r["queries"] == 0 for r in noisy)
    for row in noisy:
        def characters(r):  # brute force: characters changed, word by word (each edit is one character)
            return sum(1 for c in r["words_changed"] if one_edit_apart(c["original"], c["perturbed"]))
        assert characters(row) == characters(attacked[row["idx"]]) == len(row["words_changed"])
        assert row["original_sentence"] == attacked[row["idx"]]["original_sentence"]
        assert all(c["original"].lower() not in STOPWORDS_SAMPLE | PROTECTED for c in row["words_changed"])
    meta = json.loads((work / "noise.jsonl.meta.json").read_text())
    assert meta["counts"]["queries"] == 0 and meta["settings"]["recipe"] == "noise"


def transfer_copy(run: Path, where: Path, scale: float, seed: int) -> Path:
    """Another "seed" of the same task and backbone: the run's folder with its prompt moved at random."""
    other = where / f"{run.name}-t{seed}"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("wandb"))
    best = other / CHECKPOINT_DIR / BEST_CHECKPOINT
    checkpoint = torch.load(best, weights_only=True)
    prompt = checkpoint["state_dict"]["prompt.weight"]
    generator = torch.Generator().manual_seed(seed)
    checkpoint["state_dict"]["prompt.weight"] = prompt + scale * prompt.std() * torch.randn(prompt.shape,
                                                                                         generator=generator)
    torch.save(checkpoint, best)
    return other


@pytest.mark.slow
def test_the_transfer_filter_keeps_exactly_the_rows_that_fool_enough_other_prompts(fitted):
    work, run = fitted
    others = [transfer_copy(run, work / "others", scale, seed) for seed, scale in ((1, 0.3), (2, 1.0))]
    attack(work, run, "transfer.jsonl", "--keep", "all", "--chunk", "16", "--transfer_runs", *map(str, others),
           "--min_fooled", "1")
    rows = rows_of(work / "transfer.jsonl")
    plain = rows_of(work / "dwb_all.jsonl")
    assert [r["sentence"] for r in rows] == [r["sentence"] for r in plain]  # the same attack, then the filter
    fooled = [0] * len(rows)
    for k, other in enumerate(others):
        predicted = predictions(work, other, work / "transfer.jsonl", f"transfer{k}")
        for position, row in enumerate(rows):
            fooled[position] += predicted[position]["prediction"] != ["absent", "present"][row["label"]]
    for position, (row, source) in enumerate(zip(rows, plain)):
        if row["words_changed"]:
            assert row["transfer_fooled"] == fooled[position]
        assert row["success"] == (source["success"] and row["transfer_fooled"] >= 1)
    assert any(r["success"] for r in rows) and any(s["success"] and not r["success"] for r, s in zip(rows, plain))
    attack(work, run, "transfer2.jsonl", "--chunk", "16", "--transfer_runs", *map(str, others), "--min_fooled", "2")
    assert [r["idx"] for r in rows_of(work / "transfer2.jsonl")] == [
        r["idx"] for r, f in zip(rows, fooled) if plain[rows.index(r)]["success"] and f >= 2]


@pytest.mark.slow
def test_the_transfer_sweeps_make_one_set_that_fools_every_seeds_prompt(fitted):
    """make_configs --attack_transfer 1 over a seed-33 prompt and a seed-34 one: the attack.yaml and
    attack_noise.yaml trials of the seed-33 prompt, run as the sweep renders them, write one set of the task x
    backbone whose every row also fools the seed-34 prompt — its evaluate_attacks trial (validate: an independent
    forward) scores 0 on it — and the noise baseline edits exactly those rows without a model query."""
    import subprocess
    import sys

    from skill_neurons.sweep.config import render_command
    from tests.helpers import subprocess_env

    work, run = fitted
    grid = work / "grid"
    shutil.copytree(run, grid / run.name, ignore=shutil.ignore_patterns("wandb"))
    other = transfer_copy(run, grid, 0.3, 1)
    summary = json.loads((other / "summary.json").read_text())
    summary["settings"]["seed"] = 34
    (other / "summary.json").write_text(json.dumps(summary))
    made = subprocess.run([sys.executable, str(ROOT / "configs" / "make_configs.py"), "--scale", "tiny",
                           "--prompt_runs", str(grid), "--out", str(work / "tsweeps"), "--attacks", "tattacks",
                           "--attack_transfer", "1"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert made.returncode == 0, made.stderr
    sweeps = {name: yaml.safe_load((work / "tsweeps" / f"{name}.yaml").read_text())
              for name in ("attack", "attack_noise", "evaluate_attacks")}

    def trial(name: str, **params) -> list[str]:
        argv = render_command(sweeps[name], params)
        return argv[argv.index("skill_neurons.cli") + 1:]

    anchor = f"{grid}?backbone=tiny-roberta&task=marker&seed=33"
    cli_in_process([*trial("attack", from_run=anchor, recipe="deepwordbug"), "--wandb", "off"], cwd=work, check=True)
    cli_in_process([*trial("attack_noise", from_run=anchor, recipe="noise"), "--wandb", "off"], cwd=work, check=True)
    sets = work / "tattacks" / "tiny-roberta" / "marker" / "transfer"
    rows, noise = rows_of(sets / "deepwordbug.jsonl"), rows_of(sets / "noise.jsonl")
    assert rows and all(r["success"] and r["transfer_fooled"] == 1 for r in rows)
    meta = json.loads((sets / "deepwordbug.jsonl.meta.json").read_text())
    assert [Path(r["run"]).name for r in meta["settings"]["transfer_runs"]] == [other.name]
    assert [r["idx"] for r in noise] == [r["idx"] for r in rows] and all(r["queries"] == 0 for r in noise)

    cli_in_process([*trial("evaluate_attacks", from_run=f"{grid}?backbone=tiny-roberta&task=marker&seed=34"), *QUICK,
                    "--runs_dir=tevaluate"], cwd=work, check=True)
    evaluation = summary_of(only_run_dir(work / "tevaluate"))
    assert Path(evaluation["ckpt_path"]).parent.parent == other and "adv/noise/acc" in evaluation["validate_metrics"]
    assert evaluation["validate_metrics"]["adv/deepwordbug/acc"] == 0.0


@pytest.mark.slow
def test_the_attack_forwards_in_the_runs_precision_as_validate_does(fitted):
    """A run trained under bf16-mixed is attacked under bf16 autocast, as validate's Trainer evaluates it: the
    attack's label probabilities equal the module's predict_step inside the Trainer's own precision context, and
    differ from the fp32 ones; the set records the precision."""
    import numpy as np
    from lightning.pytorch import Trainer

    from skill_neurons.attack.model import PromptModel

    work, run = fitted
    bf16 = work / "bf16" / run.name
    shutil.copytree(run, bf16, ignore=shutil.ignore_patterns("wandb"))
    config = yaml.safe_load((bf16 / "config.yaml").read_text())
    config["trainer"]["precision"] = "bf16-mixed"
    (bf16 / "config.yaml").write_text(yaml.safe_dump(config))
    texts = [{"sentence": r["sentence"]} for r in rows_of(work / "dwb_all.jsonl")[:16]]
    model = PromptModel(bf16, "cpu", batch_size=16)
    assert model.precision == "bf16-mixed" and PromptModel(run, "cpu").precision == "32-true"
    encoded = model.encode(texts)
    got = model.probabilities(encoded, [0] * len(encoded))
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
    batch = model.collate([{**e, "label": 0, "idx": i} for i, e in enumerate(encoded)])
    with torch.inference_mode(), trainer.precision_plugin.forward_context():
        expected = model.model.predict_step(batch, 0)["probabilities"].float().numpy()
    assert np.array_equal(got, expected)
    fp32 = PromptModel(bf16, "cpu", batch_size=16, precision="32").probabilities(encoded, [0] * len(encoded))
    assert not np.allclose(fp32, got, rtol=0, atol=1e-5)  # the precision matters for these numbers
    attack(work, bf16, "bf16.jsonl", "--max_examples", "8", "--keep", "all")
    assert json.loads((work / "bf16.jsonl.meta.json").read_text())["settings"]["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_a_killed_attack_resumes_to_the_file_of_an_uninterrupted_one(fitted, monkeypatch):
    from skill_neurons.attack import command
    from skill_neurons.attack.output import AttackFile

    work, run = fitted
    args = ["--from_run", str(run), "--recipe", "pruthi", "--keep", "all", "--chunk", "8", "--wandb", "off",
            "--max_examples", "16"]
    assert command.main([*args, "--out", str(work / "whole.jsonl")]) == 0
    real_append, calls = AttackFile.append, []

    def killed_after_one_chunk(self, rows, progress):
        calls.append(1)
        if len(calls) == 2:  # the second chunk: half a row reaches the disk, then the process dies
            with open(self.out, "ab") as f:
                f.write(json.dumps(rows[0])[:25].encode())
            raise KeyboardInterrupt
        real_append(self, rows, progress)

    monkeypatch.setattr(AttackFile, "append", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        command.main([*args, "--out", str(work / "resumed.jsonl")])
    monkeypatch.setattr(AttackFile, "append", real_append)
    partial = (work / "resumed.jsonl").read_bytes()
    assert partial and not partial.endswith(b"\n")
    assert command.main([*args, "--out", str(work / "resumed.jsonl")]) == 0
    assert (work / "resumed.jsonl").read_bytes() == (work / "whole.jsonl").read_bytes()
    assert len(rows_of(work / "whole.jsonl")) == 16
    again = cli_in_process(["attack", *args, "--out", str(work / "resumed.jsonl")], cwd=work)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    other = cli_in_process(["attack", *args, "--seed", "1", "--out", str(work / "resumed.jsonl")], cwd=work)
    assert other.returncode == 2 and "holds another attack (seed: 0 -> 1)" in other.stderr
    assert (work / "resumed.jsonl").read_bytes() == (work / "whole.jsonl").read_bytes()
    (work / "cut.jsonl").write_bytes((work / "whole.jsonl").read_bytes()[:100])  # a file shorter than its record
    shutil.copy(work / "whole.jsonl.meta.json", work / "cut.jsonl.meta.json")
    cut = cli_in_process(["attack", *args, "--out", str(work / "cut.jsonl")], cwd=work)
    assert cut.returncode == 2 and "less than the" in cut.stderr and len((work / "cut.jsonl").read_bytes()) == 100


@pytest.mark.slow
def test_an_attack_needs_no_network(fitted, monkeypatch):
    """Sockets blocked (only local ones, W&B's own service, may connect): the attack runs and logs its artifact."""
    work, run = fitted
    real_connect = socket.socket.connect

    def local_only(self, address):
        if self.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network blocked in this test: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))
    done = cli_in_process(["attack", "--from_run", str(run), "--out", str(work / "offline.jsonl"),
                           "--max_examples", "8"], cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "offline.jsonl.meta.json").read_text())["complete"]
    # the set went to W&B (offline) as a dataset artifact aliased with the prompt's run
    logs = [log.read_bytes() for log in Path(os.environ["WANDB_DIR"]).glob("**/offline-run-*/*.wandb")]
    assert any(b"attack-tiny-roberta-marker-deepwordbug" in log and f"run-{run.name}".encode() in log
               and b"dataset" in log for log in logs)
    # the attack's run declares the prompt's artifact (the fit logged it) as used — which W&B cannot record offline,
    # and the sidecar says so; a prompt without an artifact has nothing to link to
    from lightning_modules.tracking import OFFLINE_USE
    from skill_neurons.attack.tracking import NO_PROMPT_ARTIFACT

    prompt = json.loads((run / "prompt_artifact" / "run.json").read_text())["artifact"]["name"]
    assert prompt.startswith("prompt-tiny-roberta-marker-")
    assert json.loads((work / "offline.jsonl.meta.json").read_text())["wandb"] == {
        "artifact": "attack-tiny-roberta-marker-deepwordbug",
        "prompt_artifact": {"ref": f"{prompt}:run-{run.name}", "declared": False, "why": OFFLINE_USE}}
    bare = work / "bare" / run.name
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("wandb", "prompt_artifact"))
    done = cli_in_process(["attack", "--from_run", str(bare), "--out", str(work / "bare.jsonl"), "--max_examples", "4"],
                          cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "bare.jsonl.meta.json").read_text())["wandb"]["prompt_artifact"] == {
        "ref": None, "declared": False, "why": NO_PROMPT_ARTIFACT}


def refused(work: Path, *args: str) -> str:
    """``skill-neurons attack ARGS`` is refused with one line (exit 2) and writes nothing."""
    out = work / "refused.jsonl"
    done = cli_in_process(["attack", *args, "--out", str(out), "--wandb", "off"], cwd=work)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists() and not Path(str(out) + ".meta.json").exists()
    return done.stderr


@pytest.mark.slow
def test_bad_input_is_refused_with_one_line_before_anything_is_written(fitted):
    work, run = fitted
    assert "--recipe 'textbugger' is not a recipe — use one of deepwordbug, pruthi, noise" in refused(
        work, "--from_run", str(run), "--recipe", "textbugger")
    assert "a budget of 0 words changes nothing" in refused(work, "--from_run", str(run), "--word_budget", "0")
    assert "task 'marker' has the splits ['train', 'validation']" in refused(
        work, "--from_run", str(run), "--split", "test")
    unlabelled = work / "bad" / "unlabelled"
    shutil.copytree(run, unlabelled, ignore=shutil.ignore_patterns("wandb"))
    (work / "bad" / "nolabels.jsonl").write_text('{"sentence": "a banana here"}\n')
    config = yaml.safe_load((unlabelled / "config.yaml").read_text())
    config["data"]["files"] = {"validation": str(work / "bad" / "nolabels.jsonl")}
    (unlabelled / "config.yaml").write_text(yaml.safe_dump(config))
    assert "an attack needs a split with labels" in refused(work, "--from_run", str(unlabelled))
    no_checkpoint = work / "bad" / "no_checkpoint"
    shutil.copytree(run, no_checkpoint, ignore=shutil.ignore_patterns("wandb", BEST_CHECKPOINT))
    assert "saved no best checkpoint" in refused(work, "--from_run", str(no_checkpoint))
    other_task = work / "bad" / "other_task"
    shutil.copytree(run, other_task, ignore=shutil.ignore_patterns("wandb"))
    summary = json.loads((other_task / "summary.json").read_text())
    summary["settings"]["task"] = "sst2"
    (other_task / "summary.json").write_text(json.dumps(summary))
    assert "its task is 'sst2', the attacked run's 'marker'" in refused(
        work, "--from_run", str(run), "--transfer_runs", str(other_task))
    assert "precision 'fp8': the attack reproduces 32-true" in refused(work, "--from_run", str(run), "--precision",
                                                                       "fp8")
    assert "16-mixed runs on a GPU only" in refused(work, "--from_run", str(run), "--precision", "16-mixed",
                                                    "--device", "cpu")
    (work / "taken.jsonl").write_text("{}\n")
    done = cli_in_process(["attack", "--from_run", str(run), "--out", str(work / "taken.jsonl")], cwd=work)
    assert done.returncode == 2 and "no attack wrote it" in done.stderr
    assert (work / "taken.jsonl").read_text() == "{}\n"


# ---------------------------------------------------------------------------- the edits (no model)
def test_every_edit_is_one_character_operation_and_keeps_first_and_last_under_pruthi():
    import random

    from skill_neurons.attack.edits import KEYBOARD, edit_distance, one_edit
    from skill_neurons.attack.recipes import pruthi_candidates

    rng = random.Random(0)
    for word in ("banana", "house", "Water", "ab"):
        for kind in ("swap", "delete", "insert", "substitute", "keyboard"):
            for i in range(len(word)):
                new = one_edit(word, kind, i, rng)
                if new is not None:
                    assert one_edit_apart(word, new) and edit_distance(word, new) == 1, (word, kind, i, new)
        for new in pruthi_candidates(word, rng):
            assert new[0] == word[0] and new[-1] == word[-1] and one_edit_apart(word, new)
    assert edit_distance("banana", "bnanaa") == 2 and edit_distance("abc", "bac") == 1
    assert set(KEYBOARD["g"]) == set("fhtybv") and set(KEYBOARD["q"]) == set("wa")
    assert all(c in KEYBOARD[n] for c, near in KEYBOARD.items() for n in near)  # symmetric


def test_word_budget_and_eligible_words_follow_advglue_rules():
    from skill_neurons.attack.edits import editable, replace_words, split_text, words_of
    from skill_neurons.attack.recipes import Constraints

    c = Constraints(word_budget=0.15)
    assert [c.max_words(n) for n in (1, 6, 7, 13, 14, 20)] == [1, 1, 2, 2, 3, 3]  # ceil(0.15 n)
    fields = {"sentence": "The banana, (yes) is  houses."}
    words = words_of(fields)
    assert [w.core for w in words] == ["The", "banana", "yes", "is", "houses"]
    assert [w.core for w in words if editable(w, frozenset({"yes"}), 2)] == ["banana", "houses"]
    assert "".join(split_text(fields["sentence"])) == fields["sentence"]
    replaced = replace_words(fields, {("sentence", words[1].token): "bnana"})
    assert replaced == {"sentence": "The bnana, (yes) is  houses."}


class MarkerOracle:
    """A stand-in for the prompt: "present" exactly when the text holds the word banana, the likelier the more
    bananas; texts of ``limit`` words or more do not fit. Records what it is shown."""

    limit = 12

    def __init__(self):
        self.shown: list[str] = []

    def encode(self, texts):
        return [{"input_ids": t["sentence"].split(), "text": t["sentence"]} for t in texts]

    def probabilities(self, encoded, labels):
        import numpy as np

        self.shown += [e["text"] for e in encoded]
        bananas = [e["input_ids"].count("banana") for e in encoded]  # each banana makes "present" likelier
        present = [0.55 + 0.1 * n if n else 0.1 for n in bananas]
        return np.array([[1 - p, p] for p in present])


def test_the_driver_batches_requests_and_never_shows_the_model_a_text_that_does_not_fit():
    import random

    from skill_neurons.attack.driver import attack_chunk
    from skill_neurons.attack.recipes import RECIPES, Constraints, Example

    texts = ["we saw a banana over there", "the old banana is here on the big table now yes please",
             "no fruit at all here", "banana bread and a banana split and a banana more"]  # the second: 12 words
    for name in ("deepwordbug", "pruthi"):
        oracle = MarkerOracle()
        examples = [Example({"sentence": t}, int("banana" in t), i, random.Random(i)) for i, t in enumerate(texts)]
        done = attack_chunk(examples, RECIPES[name], Constraints(protected=frozenset({"yes", "no"})), oracle)
        assert [a.outcome.status for a in done] == ["succeeded", "too_long", "failed", "failed"], name
        assert all(len(text.split()) < oracle.limit for text in oracle.shown)
        first = done[0].outcome
        assert first.changes[0]["original"] == "banana" and "banana" not in first.fields["sentence"]
        assert sum(a.queries for a in done) == len(oracle.shown) and done[1].queries == 0
        # three bananas, a budget of ceil(0.15 * 10) = 2 words: the prediction cannot flip
        assert len(done[3].outcome.changes) == 2
