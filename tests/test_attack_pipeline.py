"""Generated adversarial sets in the experiment pipeline: attack.yaml / evaluate_attacks.yaml (make_configs.py),
the prompt's fields in ``--out`` and ``--data.extra_adversarial``, and the report's sources and attacks table —
checked against independent computations from the files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import QUICK, ROOT, cli_in_process, only_run_dir, subprocess_env, summary_of
from tests.helpers.attack_files import synthetic_attack
from tests.test_pipeline import fake_fit_run


def make_configs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "configs/make_configs.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=subprocess_env())


# ------------------------------------------------------------------------------ the prompt's fields
def test_the_prompts_fields_fill_attack_out_and_the_evaluations_files(tmp_path):
    from skill_neurons.runs import fill_attack_fields, take_from_run

    run = fake_fit_run(tmp_path / "runs", "good0001", 0.01, 34, 0.9, "2026-01-01T10:00:00+0000")
    selector = f"{tmp_path}/runs?seed=34"
    argv = fill_attack_fields(["--from_run", selector, "--recipe=noise", "--out", "a/{backbone}/{task}/seed{seed}/"
                               "{recipe}-{run_id}.jsonl", "--split={task}"])
    assert argv == ["--from_run", selector, "--recipe=noise", "--out", "a/tiny-roberta/marker/seed34/noise-good0001.jsonl",
                    "--split={task}"]  # only --out is filled
    assert fill_attack_fields(["--from_run", selector, "--out=x.jsonl"]) == ["--from_run", selector, "--out=x.jsonl"]
    # --transfer_runs takes several values, each filled up to the next option; --match names a file of the prompt's
    argv = fill_attack_fields(["--from_run", selector, "--transfer_runs", "g?task={task}&seed=35", "g/{backbone}",
                               "--match=m/{seed}.jsonl", "--split", "{task}", "--out=o/{run_id}.jsonl"])
    assert argv == ["--from_run", selector, "--transfer_runs", "g?task=marker&seed=35", "g/tiny-roberta",
                    "--match=m/34.jsonl", "--split", "{task}", "--out=o/good0001.jsonl"]
    rest, head = take_from_run(["validate", f"--from_run={selector}",
                                "--data.extra_adversarial={dwb: {file: a/{backbone}/seed{seed}/d.jsonl}}",
                                "--data.task={task}"])
    assert rest == ["validate", "--data.extra_adversarial={dwb: {file: a/tiny-roberta/seed34/d.jsonl}}",
                    "--data.task={task}"]
    assert head[1] == str(run / "config.yaml")


# ------------------------------------------------------------------------------ the sweeps
def test_make_configs_writes_attack_and_evaluation_sweeps_that_name_the_same_files(tmp_path):
    from skill_neurons.runs import fill_attack_fields, fill_prompt_fields
    from skill_neurons.sweep.config import render_command
    from skill_neurons.sweep.processes import is_skill_neurons_stage

    made = make_configs("--scale", "tiny", "--prompt_runs", "tiny/fit/runs", "--out", str(tmp_path / "s"),
                        "--attacks", "tiny/attacks")
    assert made.returncode == 0, made.stderr
    attack = yaml.safe_load((tmp_path / "s" / "attack.yaml").read_text())
    evaluate = yaml.safe_load((tmp_path / "s" / "evaluate_attacks.yaml").read_text())
    prompts = [f"tiny/fit/runs?backbone={b}&task=marker&seed={s}" for b in ("tiny-roberta", "tiny-t5") for s in (33, 34)]
    assert attack["parameters"] == {"from_run": {"values": prompts}, "recipe": {"values": ["deepwordbug", "noise"]}}
    assert "metric" not in attack  # an attack writes no run summary to read a metric from
    assert evaluate["parameters"] == {"from_run": {"values": prompts}} and evaluate["metric"]["name"] == "val/acc"
    # without --attacks, no attack sweeps (the experiment sweeps of a user who attacks nothing stay as they were)
    assert make_configs("--scale", "tiny", "--prompt_runs", "tiny/fit/runs", "--out", str(tmp_path / "n")).returncode == 0
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["suppression.yaml", "transfer.yaml"]

    # each trial's rendered command: the attack writes where the evaluation of the same prompt reads
    run = fake_fit_run(tmp_path / "fits", "t5run001", 0.01, 33, 0.9, "2026-01-01T10:00:00+0000")
    summary = json.loads((run / "summary.json").read_text())
    summary["settings"]["backbone"] = "tiny-t5"
    (run / "summary.json").write_text(json.dumps(summary))
    written = {}
    for recipe in ("deepwordbug", "noise"):
        argv = render_command(attack, {"from_run": str(run), "recipe": recipe})
        assert argv[argv.index("skill_neurons.cli") + 1] == "attack" and not is_skill_neurons_stage(argv)
        out = next(a for a in fill_attack_fields(argv) if a.startswith("--out="))
        written[recipe] = out.split("=", 1)[1]
        assert "--max_examples=32" in argv and "--split=validation" in argv and "--keep=all" in argv
    assert written == {r: f"tiny/attacks/tiny-t5/marker/seed33/{r}.jsonl" for r in ("deepwordbug", "noise")}
    argv = render_command(evaluate, {"from_run": str(run)})
    assert is_skill_neurons_stage(argv)
    (sets,) = [a for a in fill_prompt_fields(argv, run) if a.startswith("--data.extra_adversarial=")]
    assert yaml.safe_load(sets.split("=", 1)[1]) == {r: {"file": f} for r, f in written.items()}
    # suppression.yaml suppresses the same prompts (every attacked one) with those sets beside the task's own, with
    # the clean skill neurons (the tiny scale has no own-neuron trials, so no suppression_own.yaml)
    suppression = yaml.safe_load((tmp_path / "s" / "suppression.yaml").read_text())
    assert suppression["parameters"]["from_run"] == {"values": prompts}
    assert suppression["parameters"]["suppression.adversarial_neurons"] == {"values": ["clean"]}
    argv = render_command(suppression, {"from_run": str(run), "suppression.rate": 5})
    assert [a for a in fill_prompt_fields(argv, run) if a.startswith("--data.extra_adversarial=")] == [sets]
    assert not (tmp_path / "s" / "suppression_own.yaml").exists()

    tracked = yaml.safe_load((ROOT / "sweeps" / "attack.yaml").read_text())  # the tracked paper-scale sweep
    assert len(tracked["parameters"]["from_run"]["values"]) == 2 * 9 * 5


def test_the_transfer_form_attacks_one_prompt_per_task_and_backbone_and_every_seed_reads_its_sets(tmp_path):
    from skill_neurons.attack.command import build_parser
    from skill_neurons.runs import fill_attack_fields, fill_prompt_fields
    from skill_neurons.sweep.config import render_command

    made = make_configs("--scale", "tiny", "--prompt_runs", f"{tmp_path}/fits", "--out", str(tmp_path / "s"),
                        "--attacks", "A", "--attack_transfer", "1")
    assert made.returncode == 0, made.stderr
    sweeps = {p.stem: yaml.safe_load(p.read_text()) for p in (tmp_path / "s").iterdir()}
    assert sorted(sweeps) == ["attack", "attack_noise", "evaluate_attacks", "suppression", "transfer"]
    assert "--attacks A --attack_transfer 1`" in (tmp_path / "s" / "attack.yaml").read_text().splitlines()[0]
    anchors = [f"{tmp_path}/fits?backbone={b}&task=marker&seed=33" for b in ("tiny-roberta", "tiny-t5")]
    for name in ("attack", "attack_noise"):
        assert sweeps[name]["parameters"]["from_run"] == {"values": anchors} and "metric" not in sweeps[name]
    assert sweeps["attack"]["parameters"]["recipe"] == {"values": ["deepwordbug"]}
    assert sweeps["attack_noise"]["parameters"]["recipe"] == {"values": ["noise"]}
    every_seed = [f"{tmp_path}/fits?backbone={b}&task=marker&seed={s}" for b in ("tiny-roberta", "tiny-t5")
                  for s in (33, 34)]
    assert sweeps["evaluate_attacks"]["parameters"]["from_run"] == {"values": every_seed}

    # the trials' commands, with an anchor and the other seed's prompt under the prompts' folder
    anchor = fake_fit_run(tmp_path / "fits", "anchor33", 0.01, 33, 0.9, "2026-01-01T10:00:00+0000")
    other = fake_fit_run(tmp_path / "fits", "other034", 0.01, 34, 0.9, "2026-01-01T11:00:00+0000")
    fake_fit_run(tmp_path / "fits", "taskb033", 0.01, 34, 0.9, "2026-01-01T12:00:00+0000")
    summary = json.loads((tmp_path / "fits" / "taskb033" / "summary.json").read_text())
    summary["settings"]["task"] = "sst2_sample"  # another task's prompt of the same seed: not a transfer target
    (tmp_path / "fits" / "taskb033" / "summary.json").write_text(json.dumps(summary))

    def attack_args(name: str, recipe: str):
        argv = render_command(sweeps[name], {"from_run": anchors[0], "recipe": recipe})
        argv = fill_attack_fields(argv[argv.index("attack") + 1:])
        return build_parser().parse_args(argv)

    dwb, noise = attack_args("attack", "deepwordbug"), attack_args("attack_noise", "noise")
    assert dwb.transfer_runs == [f"{tmp_path}/fits?backbone=tiny-roberta&task=marker&seed=34"] and dwb.min_fooled == 1
    from skill_neurons.runs import find_fit_run

    assert find_fit_run(dwb.transfer_runs[0]).resolve() == other.resolve()
    assert dwb.keep == "successful" and dwb.max_examples == 32  # AdvGLUE keeps the transferable rows only
    assert dwb.out == Path("A/tiny-roberta/marker/transfer/deepwordbug.jsonl")
    assert noise.match == dwb.out and noise.out == Path("A/tiny-roberta/marker/transfer/noise.jsonl")
    assert noise.transfer_runs == [] and noise.max_examples == 32
    # every seed's prompt reads the task x backbone's sets, in its evaluation and under suppression
    for name in ("evaluate_attacks", "suppression"):
        for run in (anchor, other):
            argv = render_command(sweeps[name], {"from_run": str(run)})
            (sets,) = [a for a in fill_prompt_fields(argv, run) if a.startswith("--data.extra_adversarial=")]
            assert yaml.safe_load(sets.split("=", 1)[1]) == {
                "deepwordbug": {"file": str(dwb.out)}, "noise": {"file": str(noise.out)}}


def test_the_paper_scale_suppresses_generated_sets_with_the_clean_neurons_and_keeps_own_apart(tmp_path):
    made = make_configs("--prompt_runs", "grid/runs", "--out", str(tmp_path / "s"), "--attacks", "A")
    assert made.returncode == 0, made.stderr
    suppression = yaml.safe_load((tmp_path / "s" / "suppression.yaml").read_text())
    own = yaml.safe_load((tmp_path / "s" / "suppression_own.yaml").read_text())
    assert suppression["parameters"]["suppression.adversarial_neurons"] == {"values": ["clean"]}
    assert own["parameters"]["suppression.adversarial_neurons"] == {"values": ["own"]}
    assert any(a.startswith("--data.extra_adversarial=") for a in suppression["command"])
    assert not any(a.startswith("--data.extra_adversarial=") for a in own["command"])
    # the two split the tracked sweep's trials: the same prompts, rates and selections
    tracked = yaml.safe_load((ROOT / "sweeps" / "suppression.yaml").read_text())
    for key, values in tracked["parameters"].items():
        if key not in ("from_run", "suppression.adversarial_neurons"):
            assert suppression["parameters"][key] == own["parameters"][key] == values
    assert len(suppression["parameters"]["from_run"]["values"]) == len(tracked["parameters"]["from_run"]["values"])
    assert tracked["parameters"]["suppression.adversarial_neurons"] == {"values": ["clean", "own"]}


@pytest.mark.parametrize("args, message", [
    (("--attack_transfer", "1"), "give --attacks DIR too"),
    (("--attacks", "A", "--attack_transfer", "5"), "give k between 1 and 4"),
    (("--attacks", "A", "--attack_transfer", "0"), "give k between 1 and 4"),
])
def test_a_bad_transfer_filter_is_refused_in_one_line_before_anything_is_written(tmp_path, args, message):
    refused = make_configs("--prompt_runs", "grid/runs", "--out", str(tmp_path / "s"), *args)
    assert refused.returncode != 0 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ the report's attacks table
def test_the_attacks_table_pools_success_and_words_changed_per_backbone_and_recipe(tmp_path):
    from skill_neurons.report.main import main
    from tests.test_report import fit_run

    rng = random.Random(5)
    truth: dict[tuple, list[dict]] = {}
    for backbone in ("tiny-roberta", "tiny-t5"):
        fit_run(tmp_path, backbone, "sst2", 33)
        for seed in (33, 34):
            for recipe in ("deepwordbug", "noise"):
                made = synthetic_attack(tmp_path / "runs" / "attacks", backbone, "sst2", seed, recipe, rng)
                truth.setdefault((backbone, recipe), []).append(made)
    unfinished = synthetic_attack(tmp_path / "runs" / "attacks", "tiny-t5", "qnli", 33, "deepwordbug", rng)
    meta = tmp_path / "runs" / "attacks" / "tiny-t5" / "qnli" / "seed33" / "deepwordbug.jsonl.meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "complete": False}))  # a killed attack: left out
    assert unfinished and main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {(r["backbone"], r["recipe"]): r for r in report["attacks"]["rows"]}
    assert set(rows) == set(truth)
    for key, made in truth.items():
        outcomes = [o for m in made for o in m["outcomes"]]
        kept = [r for m in made for r in m["rows"]]
        row = rows[key]
        assert row["files"] == 2 and row["tasks"] == ["sst2"]
        if key[1] == "noise":
            assert row["success_rate"] is None and row["queries"] == 0
        else:
            attacked = sum(o in ("succeeded", "failed") for o in outcomes)
            assert row["success_rate"] == pytest.approx(outcomes.count("succeeded") / attacked)
        assert row["mean_words_changed"] == pytest.approx(sum(len(r["words_changed"]) for r in kept) / len(kept))
    # RoBERTa before T5, the attack before its noise baseline; the markdown shows the rates
    assert list(rows) == [("tiny-roberta", "deepwordbug"), ("tiny-roberta", "noise"), ("tiny-t5", "deepwordbug"),
                          ("tiny-t5", "noise")]
    markdown = (tmp_path / "report" / "report.md").read_text()
    rate = rows[("tiny-t5", "deepwordbug")]["success_rate"]
    assert f"| tiny-t5 (T5-like) | deepwordbug | 2 | sst2 |" in markdown and f"{100 * rate:.1f} %" in markdown


# ------------------------------------------------------------------------------ a real round trip
FIT = ["--trainer.max_epochs=3", "--data.max_train_samples=512", "--data.max_eval_samples=40",
       "--data.batch_size=16", "--data.eval_batch_size=40", "--model.learning_rate=0.03"]


@pytest.mark.slow
def test_a_generated_set_goes_through_validate_the_neuron_analysis_and_the_report(tmp_path, tiny_backbones):
    """A tiny fit (with its skill-neuron analysis), an attack and its noise baseline written where the prompt's
    fields say, a validate reading both through --data.extra_adversarial, then the report: the generated set's
    accuracy, its skill-neuron numbers and the attack's success are those of the files and summary.json."""
    cli_in_process(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *QUICK, *FIT, "--runs_dir=w/fits"],
                   cwd=tmp_path, check=True)
    fit = only_run_dir(tmp_path / "w" / "fits")
    out = "w/attacks/{backbone}/{task}/seed{seed}/{recipe}.jsonl"
    for recipe in ("deepwordbug", "noise"):
        cli_in_process(["attack", "--from_run", str(fit), "--recipe", recipe, "--max_examples", "16", "--out", out,
                        "--wandb", "off"], cwd=tmp_path, check=True)
    files = {r: tmp_path / "w" / "attacks" / "tiny-roberta" / "marker" / "seed33" / f"{r}.jsonl"
             for r in ("deepwordbug", "noise")}
    assert all(f.is_file() for f in files.values())
    sets = "{" + ", ".join(f'{r}: {{file: "{out.replace("{recipe}", r)}"}}' for r in files) + "}"
    cli_in_process(["validate", "--from_run", str(fit), *QUICK, "--runs_dir=w/evaluate",
                    f"--data.extra_adversarial={sets}"], cwd=tmp_path, check=True)
    evaluation = summary_of(only_run_dir(tmp_path / "w" / "evaluate"))
    assert {"deepwordbug", "noise", "marker_typo"} <= set(evaluation["skill_neurons"]["sets"])
    rows = [json.loads(line) for line in files["deepwordbug"].read_text().splitlines()]
    assert rows and all(r["success"] for r in rows)
    # every kept row fools the prompt it was made against: the validate's accuracy on it is 0
    assert evaluation["validate_metrics"]["adv/deepwordbug/acc"] == 0.0
    # a generated set's own skill neurons are those of the validate run that analysed it: suppressing them
    evaluated = only_run_dir(tmp_path / "w" / "evaluate")
    cli_in_process(["validate", "--from_run", str(fit), *QUICK, "--runs_dir=w/suppressed", "--suppression.rate=10",
                    f"--suppression.neurons=[{evaluated}]", "--suppression.adversarial_neurons=own",
                    f"--data.extra_adversarial={sets}"], cwd=tmp_path, check=True)
    suppressed = summary_of(only_run_dir(tmp_path / "w" / "suppressed"))
    assert {name: [Path(f).name for f in files] for name, files in suppressed["suppression"]["neuron_files"].items()
            } == {name: [f"{name}.safetensors"] for name in ("validation", "marker_typo", "deepwordbug", "noise")}
    assert all(Path(f).parent.parent == evaluated for files in suppressed["suppression"]["neuron_files"].values()
               for f in files)

    cli_in_process(["report", "w", "--out", "w/report"], cwd=tmp_path, check=True)
    report = json.loads((tmp_path / "w" / "report" / "report.json").read_text())
    accuracy = {r["set"]: r for r in report["accuracy"]["rows"]}
    assert {name: accuracy[name]["source"] for name in accuracy} == {
        "validation": "clean", "marker_typo": "declared", "deepwordbug": "generated", "noise": "noise"}
    for name in ("deepwordbug", "noise"):
        assert accuracy[name]["values"] == [pytest.approx(100 * evaluation["validate_metrics"][f"adv/{name}/acc"])]
    fit_summary = summary_of(fit)
    assert accuracy["validation"]["values"] == [pytest.approx(100 * fit_summary["best"]["val/acc"])]
    # the neuron sections read the validate run (it analysed more sets): every source has its overlap, recomputed
    # from the neuron files and equal to what the validate run's callback recorded (the section's own check)
    assert {"deepwordbug", "noise", "marker_typo"} <= {r["set"] for r in report["overlap"]["rows"]}
    assert report["overlap"]["mismatches"] == []
    assert {"deepwordbug", "noise"} <= {r["set"] for r in report["paper_overlap"]["rows"]}
    meta = json.loads((files["deepwordbug"].parent / "deepwordbug.jsonl.meta.json").read_text())
    (attack_row,) = [r for r in report["attacks"]["rows"] if r["recipe"] == "deepwordbug"]
    assert attack_row["success_rate"] == pytest.approx(meta["counts"]["succeeded"] / meta["counts"]["attacked"])
    assert attack_row["mean_words_changed"] == pytest.approx(
        sum(len(r["words_changed"]) for r in rows) / len(rows))
