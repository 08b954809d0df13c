"""The tiny pipeline as README shows it, and how its commands find and place runs: an ambiguous ``--from_run``
selector is refused with its candidates (``&pick=best|latest`` chooses), derived runs go under ``--runs_dir``
(default ``runs/``) and each command's last line says where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import QUICK, ROOT, cli_in_process, subprocess_env

TINY_FIT = [*QUICK, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--data.max_train_samples=64",
            "--data.max_eval_samples=32", "--trainer.callbacks=[]", "--trainer.logger=false"]


def fake_fit_run(root: Path, run_id: str, lr: float, seed: int, best: float, finished: str) -> Path:
    """A finished fit run folder as find_run reads it: summary.json (settings, config, best) and best.ckpt."""
    run = root / run_id
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    config = {"model.backbone": "tiny-roberta", "model.learning_rate": lr, "data.task": "marker",
              "seed_everything": seed, "trainer.default_root_dir": str(run)}
    (run / "summary.json").write_text(json.dumps({
        "run_id": run_id, "stage": "fit", "status": "finished", "finished": finished, "config": config,
        "settings": {"backbone": "tiny-roberta", "task": "marker", "seed": seed, "learning_rate": lr},
        "best": {"val/acc": best}}))
    return run


# ------------------------------------------------------------------------------ --from_run selectors
def test_an_ambiguous_from_run_selector_is_refused_with_its_candidates(tmp_path, monkeypatch, capsys):
    from skill_neurons.cli import main

    monkeypatch.chdir(tmp_path)
    fake_fit_run(tmp_path / "sweep" / "runs", "good0001", 0.01, 34, 0.9975, "2026-01-01T10:00:00+0000")
    fake_fit_run(tmp_path / "sweep" / "runs", "late0002", 0.003, 34, 0.68, "2026-01-01T11:00:00+0000")
    fake_fit_run(tmp_path / "sweep" / "runs", "othr0003", 0.003, 33, 0.75, "2026-01-01T12:00:00+0000")
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--from_run", "sweep?seed=34"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1  # one line, before any work
    assert "matches 2 finished fit runs (they differ in model.learning_rate)" in err
    assert "good0001 (lr0.01, best val/acc 0.9975)" in err and "late0002 (lr3e-3, best val/acc 0.68)" in err
    assert "othr0003" not in err and "&pick=best" in err and "&pick=latest" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pick, chosen", [("best", "good0001"), ("latest", "late0002")])
def test_pick_chooses_among_matching_runs(tmp_path, pick, chosen):
    from skill_neurons.runs import take_from_run

    for args in (("good0001", 0.01, 34, 0.9975, "2026-01-01T10:00:00+0000"),
                 ("late0002", 0.003, 34, 0.68, "2026-01-01T11:00:00+0000")):
        fake_fit_run(tmp_path / "runs", *args)
    _, head = take_from_run(["validate", f"--from_run={tmp_path}/runs?seed=34&pick={pick}"])
    assert head[:2] == ["--config", str(tmp_path / "runs" / chosen / "config.yaml")]
    # a setting that tells them apart needs no pick; a pick that is not one is refused
    _, head = take_from_run(["validate", f"--from_run={tmp_path}/runs?seed=34&learning_rate=0.003"])
    assert head[1] == str(tmp_path / "runs" / "late0002" / "config.yaml")


def test_an_unknown_pick_is_refused(tmp_path, monkeypatch, capsys):
    from skill_neurons.cli import main

    monkeypatch.chdir(tmp_path)
    fake_fit_run(tmp_path / "runs", "good0001", 0.01, 34, 0.9975, "2026-01-01T10:00:00+0000")
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--from_run", "runs?seed=34&pick=worst"])
    assert exit_.value.code == 2 and "pick='worst' is not one of latest, best" in capsys.readouterr().err


# ------------------------------------------------------------------------------ where derived runs go
def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_derived_runs_go_under_runs_dir_never_beside_the_source_run(tmp_path, monkeypatch):
    # a fit run as a sweep leaves it: its config.yaml names the sweep's runs folder
    fit = cli_in_process(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *TINY_FIT,
                          "--runs_dir=sweep/runs"], cwd=tmp_path, check=True)
    (source,) = (tmp_path / "sweep" / "runs").iterdir()
    assert last_line(fit.stderr) == f"skill-neurons: run {source.name} is in sweep/runs/{source.name}"
    assert yaml.safe_load((source / "config.yaml").read_text())["runs_dir"] == "sweep/runs"

    evaluate = ["validate", "--from_run", str(source), *TINY_FIT]
    default = cli_in_process(evaluate, cwd=tmp_path, check=True)
    (derived,) = (tmp_path / "runs").iterdir()
    assert last_line(default.stderr) == f"skill-neurons: run {derived.name} is in runs/{derived.name}"
    assert json.loads((derived / "summary.json").read_text())["prompt_source"]["run_id"] == source.name
    assert sorted(p.name for p in (tmp_path / "sweep" / "runs").iterdir()) == [source.name]  # nothing beside it

    given = cli_in_process([*evaluate, "--runs_dir=elsewhere"], cwd=tmp_path, check=True)
    (other,) = (tmp_path / "elsewhere").iterdir()
    assert last_line(given.stderr) == f"skill-neurons: run {other.name} is in elsewhere/{other.name}"

    # a sweep trial's folder ($SKILL_NEURONS_RUNS_DIR) wins over the default, as for every trial
    monkeypatch.setenv("SKILL_NEURONS_RUNS_DIR", str(tmp_path / "trials"))
    cli_in_process(evaluate, cwd=tmp_path, check=True)
    assert len(list((tmp_path / "trials").iterdir())) == 1 and len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.subprocess  # the trial is a child process
def test_a_sweeps_last_line_says_where_its_runs_are(tmp_path, monkeypatch, capsys):
    from skill_neurons.sweep import command as sweep_command
    from tests.test_sweeps import synthetic_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLS_LOG", str(tmp_path / "calls.log"))
    sweep = synthetic_sweep(tmp_path, method="grid", parameters={"quality": {"values": [0.5, 1.0]},
                                                                 "epochs": {"value": 1}})
    assert sweep_command.main([str(sweep), "--dir", "d", "--poll", "0.05"]) == 0
    sweep_id = json.loads((tmp_path / "d" / "state.json").read_text())["sweep_id"]
    assert last_line(capsys.readouterr().out) == f"skill-neurons sweep: sweep {sweep_id} is in d; its runs are in d/runs"
    assert len(list((tmp_path / "d" / "runs").iterdir())) == 2


def test_make_configs_writes_generated_sweeps_only_into_the_users_folder(tmp_path):
    def make_configs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "configs/make_configs.py", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env=subprocess_env())

    tracked = {p.name: p.read_text() for p in (ROOT / "sweeps").glob("*.yaml")}
    refused = make_configs("--prompt_runs", "grid/runs")
    assert refused.returncode == 2 and "--prompt_runs and --out go together" in refused.stderr
    refused = make_configs("--prompt_runs", "grid/runs", "--out", "sweeps")
    assert refused.returncode != 0 and "tracked sweeps/ folder" in refused.stderr
    made = make_configs("--scale", "tiny", "--prompt_runs", "tiny/fit/runs", "--out", str(tmp_path / "s"))
    assert made.returncode == 0, made.stderr
    assert {p.name: p.read_text() for p in (ROOT / "sweeps").glob("*.yaml")} == tracked
    transfer = yaml.safe_load((tmp_path / "s" / "transfer.yaml").read_text())
    old = make_configs("--scale", "tiny", "--prompt-runs", "tiny/fit/runs", "--out", str(tmp_path / "old"))
    assert old.returncode == 0 and "deprecated spelling: --prompt-runs -> --prompt_runs" in old.stderr
    assert (tmp_path / "old" / "transfer.yaml").read_text() == \
        (tmp_path / "s" / "transfer.yaml").read_text().replace(str(tmp_path / "s"), str(tmp_path / "old"))
    assert transfer["parameters"]["from_run"]["values"] == [
        f"tiny/fit/runs?backbone={b}&task={t}&seed=33" for b in ("tiny-roberta", "tiny-t5")
        for t in ("marker", "sst2_sample")]
    assert transfer["parameters"]["data.task"] == {"values": ["marker", "sst2_sample"]}


# ------------------------------------------------------------------------------ the tiny pipeline
def skill_neurons(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real console script (the one ``pip install -e .`` puts beside the interpreter)."""
    script = Path(sys.executable).parent / "skill-neurons"
    proc = subprocess.run([str(script), *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"skill-neurons {' '.join(args)} failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def readme_pipeline() -> list[list[str]]:
    """The tiny pipeline's commands as README's "The tiny pipeline" block gives them."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## The tiny pipeline"):]
    block = block[block.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [line.split("#")[0].split() for line in block.strip().splitlines() if line.split("#")[0].strip()]


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_tiny_pipeline_runs_end_to_end_and_fills_every_report_section(tmp_path, tiny_backbones):
    commands = readme_pipeline()
    assert [c[:2] for c in commands] == [["skill-neurons", "sweep"], ["python", "configs/make_configs.py"],
                                         *[["skill-neurons", "sweep"]] * 5, ["skill-neurons", "report"]]
    # run from the repository root, as README says, with every output under tmp_path instead of tiny/
    out = str(tmp_path / "tiny")
    for command in commands:
        command = [a.replace("tiny/", f"{out}/") if a.startswith("tiny/") else
                   out if a == "tiny" and command[i - 1] == "report" else a for i, a in enumerate(command)]
        if command[0] == "python":
            proc = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=subprocess_env(),
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        else:
            proc = skill_neurons(*command[1:], cwd=ROOT)
            if command[1] == "sweep":  # the last line says where the sweep and its runs are
                where = command[command.index("--dir") + 1]
                assert last_line(proc.stdout).endswith(f" is in {where}; its runs are in {where}/runs")
    tiny = tmp_path / "tiny"
    states = {name: json.loads((tiny / name / "state.json").read_text())
              for name in ("fit", "attack", "evaluate", "suppression", "transfer", "intervention")}
    assert {name: len(s["trials"]) for name, s in states.items()} == {"fit": 8, "attack": 8, "evaluate": 4,
                                                                      "suppression": 24, "transfer": 8,
                                                                      "intervention": 4}
    assert all(t["state"] == "finished" for s in states.values() for t in s["trials"])
    # the prompts learn the marker task (a planted structure) and stay near chance on sst2_sample, which the random
    # tiny backbones cannot read; so suppressing their skill neurons has something to destroy
    best = {}
    for run in (tiny / "fit" / "runs").iterdir():
        summary = json.loads((run / "summary.json").read_text())
        best[(summary["settings"]["backbone"], summary["settings"]["task"], summary["settings"]["seed"])] = \
            summary["best"]["val/acc"]
    assert len(best) == 8
    assert all(acc >= 0.9 for (_, task, _), acc in best.items() if task == "marker"), best
    # the derived runs are where their sweeps put them, none beside the prompts
    assert len(list((tiny / "fit" / "runs").iterdir())) == 8
    assert len(list((tiny / "suppression" / "runs").iterdir())) == 24
    generated = yaml.safe_load((tiny / "sweeps" / "suppression.yaml").read_text())
    assert generated["parameters"]["suppression.rate"] == {"values": [0, 5, 15]}
    assert generated["parameters"]["suppression.neuron_source"] == {"values": ["seed_mean"]}

    report = json.loads((tiny / "report" / "report.json").read_text())
    markdown = (tiny / "report" / "report.md").read_text()
    from skill_neurons.report.base import TITLES

    empty = {key: report[key]["missing"] for key in TITLES if report[key]["missing"]}
    assert empty == {}
    for key in TITLES:
        assert f"## {report[key]['title']}" in markdown
    # both families in the RoBERTa-vs-T5 sections, both tasks in the transfer matrix
    assert {r["backbone"] for r in report["paper_histogram"]["rows"]} == {"tiny-roberta", "tiny-t5"}
    assert {r["backbone"] for r in report["paper_suppression"]["rows"]} == {"tiny-roberta", "tiny-t5"}
    for backbone in ("tiny-roberta", "tiny-t5"):
        assert sorted(report["transfer"]["backbones"][backbone]["tasks"]) == ["marker", "sst2_sample"]
    # the attack step: each marker prompt's generated and noise sets, beside marker_typo, in the report
    sources = {(r["backbone"], r["set"]): r["source"] for r in report["accuracy"]["rows"] if r["task"] == "marker"}
    for backbone in ("tiny-roberta", "tiny-t5"):
        assert {s: sources[(backbone, s)] for s in ("marker_typo", "deepwordbug", "noise")} == {
            "marker_typo": "declared", "deepwordbug": "generated", "noise": "noise"}
        for seed in (33, 34):
            assert (tiny / "attacks" / backbone / "marker" / f"seed{seed}" / "deepwordbug.jsonl.meta.json").is_file()
    assert {(r["backbone"], r["recipe"]) for r in report["attacks"]["rows"]} == {
        (b, r) for b in ("tiny-roberta", "tiny-t5") for r in ("deepwordbug", "noise")}
    assert {r["set"] for r in report["paper_overlap"]["rows"]} >= {"deepwordbug", "noise"}
    # suppression evaluated the generated sets too: a curve per set, over both seeds' prompts of each backbone
    suppressed = {(r["backbone"], r["set"], r["selection"], r["rate"]): r["seeds"]
                  for r in report["paper_suppression"]["rows"]}
    for backbone in ("tiny-roberta", "tiny-t5"):
        for name in ("validation", "marker_typo", "deepwordbug", "noise"):
            assert all(sorted(suppressed[(backbone, name, selection, rate)]) == [33, 34]
                       for selection in ("skill", "random") for rate in (0.0, 5.0, 15.0)), (backbone, name)
    for figure in report["accuracy"]["figures"]:
        assert (tiny / "report" / figure["file"]).is_file()
