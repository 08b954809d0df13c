"""``skill-neurons report`` on a folder of mixed runs: every comparable group reported (backbone family × layout ×
analysed positions), one configuration per backbone × task (seed means never over hyper-parameter trials or a
repeated seed), the filters, and figures a reader can trust (checked on the matplotlib objects and report.json).

Runs are synthetic run folders written with the project's writers (``save_neuron_file``, ``update_summary``) by
the builders of ``tests/test_report.py``, ``tests/test_report_paper.py`` and ``tests/test_causal_lm_experiments.py``:
a RoBERTa run with the ``paper`` layout, a T5 run with the ``standard`` one and a causal LM analysed at the last
position, as the README's quick-starts leave them in ``runs/``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from records import figures as style
from records.summary import read_summary, update_summary
from skill_neurons.report import base
from skill_neurons.report.base import TITLES
from skill_neurons.report.main import main
from tests.helpers import QUICK, ROOT, cli_in_process, subprocess_env
from tests.test_causal_lm_experiments import as_causal
from tests.test_report import fit_run, suppression_run, transfer_run
from tests.test_report_paper import fit_run as paper_fit_run

SEEDS = (33, 34)


def mixed_runs(root: Path) -> Path:
    """``root/runs``: RoBERTa (``paper`` layout), T5 (``standard``, with transfer and suppression runs) and GPT-2
    (analysed at the last position), two tasks × two seeds each."""
    runs = root / "runs"
    for seed in SEEDS:
        for task in ("sst2", "qnli"):
            paper_fit_run(runs / "roberta", "tiny-roberta", task, seed, layout="paper")
            fit_run(root / "t5", "tiny-t5", task, seed)
            gpt = as_causal(fit_run(root / "gpt", "tiny-roberta", task, seed), "last")
            update_summary(gpt, run_id=f"fit-tiny-gpt2-{task}-{seed}")
        transfer_run(root / "t5", "tiny-t5", "sst2", "qnli", seed)
        for rate in (0.0, 15.0):
            for selection in ("skill", "random"):
                suppression_run(root / "t5", "tiny-t5", "sst2", seed, rate, selection)
    for folder in ("t5", "gpt"):
        shutil.move(str(root / folder / "runs"), str(runs / folder))
        (root / folder).rmdir()
    return runs


def console_script() -> list[str]:
    """The installed ``skill-neurons`` console script beside this interpreter (``python -m`` where it is absent)."""
    script = Path(sys.executable).with_name("skill-neurons")
    return [str(script)] if script.exists() else [sys.executable, "-m", "skill_neurons.cli"]


@pytest.mark.subprocess
def test_console_script_reports_every_comparable_group_of_a_mixed_runs_folder(tmp_path):
    runs = mixed_runs(tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run([*console_script(), "report", str(runs), "--out", str(out)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads((out / "report.json").read_text())
    groups = {g["family"]: g for g in document["groups"]}
    assert set(groups) == {"masked_lm", "seq2seq", "causal_lm"}
    assert (groups["masked_lm"]["layout"], groups["masked_lm"]["analysed_positions"]) == (["paper"], ["prompt"])
    assert (groups["seq2seq"]["layout"], groups["seq2seq"]["analysed_positions"]) == (["standard"], ["prompt"])
    assert groups["causal_lm"]["analysed_positions"] == ["last"]
    assert groups["seq2seq"]["kinds"] == {"fit": 4, "transfer": 2, "suppression": 8}
    for group in groups.values():
        assert group["tasks"] == ["qnli", "sst2"] and len(group["configurations"]) == 2
        assert all(c["seeds"] == list(SEEDS) for c in group["configurations"])
    markdown = (out / "report.md").read_text()
    for name in ("RoBERTa-like", "T5-like", "GPT-like (decoder-only)"):
        assert sum(line.startswith(f"- **{name}**") for line in markdown.splitlines()) == 1
    # every family is in the neuron sections, each seed mean over its own two seeds
    rows = document["spearman_seeds"]["rows"]
    assert {r["backbone"] for r in rows} == {"tiny-roberta", "tiny-t5", "tiny-gpt2"}
    assert all(r["seeds"] == list(SEEDS) for r in rows)
    assert all(document[key]["missing"] is None for key in ("accuracy", "transfer", "suppression", "paper_boxes"))


def test_a_family_mixing_layouts_is_refused_naming_runs_and_the_filter_and_nothing_is_written(tmp_path, capsys):
    runs = mixed_runs(tmp_path)
    paper_fit_run(runs / "roberta-standard", "tiny-roberta", "sst2", 35, layout="standard")
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "RoBERTa-like runs mix" in error and "--layout paper or standard" in error
    assert "layout standard, analysed positions prompt: `fit-tiny-roberta-sst2-35`" in error
    assert not out.exists()
    assert main([str(runs), "--out", str(out), "--layout", "paper"]) == 0  # the filter named in the error
    document = json.loads((out / "report.json").read_text())
    assert document["runs"]["read"] == 4 and all("fit-tiny-roberta-sst2-35" not in c["runs"]
                                                 for c in document["configurations"])
    assert {g["family"] for g in document["groups"]} == {"masked_lm"}  # T5 and GPT-2 have no paper layout


def test_backbone_and_task_filters_keep_only_their_runs(tmp_path):
    runs = mixed_runs(tmp_path)
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out), "--backbone", "seq2seq", "--task", "sst2"]) == 0
    document = json.loads((out / "report.json").read_text())
    assert {(r["backbone"], r["task"]) for r in document["accuracy"]["rows"]} == {("tiny-t5", "sst2")}
    assert "Left out by the filters (--backbone seq2seq, --task sst2)" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------- configurations


def grid(root: Path, repeat: bool = False) -> Path:
    """Two learning rates × two seeds of tiny-roberta on sst2 (lr 0.003 the better), with suppression runs of
    each prompt; ``repeat``: seed 33 of lr 0.003 run once more, finishing later with another accuracy."""
    runs = root / "runs"
    trials = [(lr, seed, "") for lr in (0.01, 0.003) for seed in SEEDS] + ([(0.003, 33, "-again")] if repeat else [])
    for lr, seed, again in trials:
        run_id = f"fit-lr{lr:g}-s{seed}{again}"
        run_dir = fit_run(root / run_id, "tiny-roberta", "sst2", seed)
        summary = read_summary(run_dir)
        summary["best"]["val/acc"] = (0.9 if lr == 0.003 else 0.7) + seed / 1000 + (0.05 if again else 0.0)
        config = {"seed_everything": seed, "model.backbone": "tiny-roberta", "data.task": "sst2",
                  "model.learning_rate": lr, "trainer.max_epochs": 3, "trainer.default_root_dir": str(run_dir),
                  "trainer.logger.name": run_id}
        update_summary(run_dir, run_id=run_id, config=config, best=summary["best"],
                       finished=f"2026-01-0{2 if again else 1}T00:00:00")
        for selection in ("skill", "random"):
            sup = suppression_run(root / run_id, "tiny-roberta", "sst2", seed, 15.0, selection)
            update_summary(sup, run_id=f"sup-{selection}-{run_id}",
                           prompt_source={**read_summary(sup)["prompt_source"], "run_id": run_id})
        shutil.move(str(root / run_id / "runs"), str(runs / run_id))
        shutil.rmtree(root / run_id)
    return runs


def test_a_two_learning_rate_by_two_seed_grid_is_two_configurations_of_two_seeds(tmp_path):
    out = tmp_path / "report"
    assert main([str(grid(tmp_path)), "--out", str(out)]) == 0
    document = json.loads((out / "report.json").read_text())
    configurations = {c["label"]: c for c in document["configurations"]}
    assert set(configurations) == {"lr0.01", "lr3e-3"}
    for label, lr in (("lr0.01", "0.01"), ("lr3e-3", "0.003")):
        c = configurations[label]
        assert c["seeds"] == [33, 34] and c["settings"]["model.learning_rate"] == float(lr)
        suppressions = [f"sup-{sel}-fit-lr{lr}-s{s}" for s in SEEDS for sel in ("skill", "random")]
        assert sorted(c["runs"]) == sorted([f"fit-lr{lr}-s{s}" for s in SEEDS] + suppressions)
    assert configurations["lr3e-3"]["selected"] and not configurations["lr0.01"]["selected"]
    assert configurations["lr3e-3"]["best_val_acc_mean"] == pytest.approx(100 * (0.9 + 0.0335))
    # every seed mean is over the two seeds of the chosen configuration, never four runs
    (accuracy,) = [r for r in document["accuracy"]["rows"] if r["kind"] == "clean"]
    assert accuracy["seeds"] == [33, 34] and sorted(accuracy["runs"]) == ["fit-lr0.003-s33", "fit-lr0.003-s34"]
    (spearman,) = document["spearman_seeds"]["rows"]
    assert spearman["runs"] == ["fit-lr0.003-s33", "fit-lr0.003-s34"]
    assert {tuple(r["runs"]) for r in document["suppression"]["rows"]} == {("sup-skill-fit-lr0.003-s33",
            "sup-skill-fit-lr0.003-s34"), ("sup-random-fit-lr0.003-s33", "sup-random-fit-lr0.003-s34")}
    # the Spearman matrix labels its rows by configuration and seed; figure titles name the configuration
    markdown = (out / "report.md").read_text()
    assert "tiny-roberta · sst2: lr3e-3 [" in markdown and "seeds 33, 34 (the best of 2 by mean best validation" \
        in markdown
    figures = {Path(f["file"]).name: f for key in TITLES for f in document[key]["figures"]}
    assert figures["spearman-seeds_tiny-roberta_encoder_sst2.png"]["configuration"].startswith(
        "configuration lr3e-3 [")
    assert "configuration lr3e-3" in figures["accuracy.png"]["configuration"]


def test_configuration_option_chooses_another_configuration_by_label_or_id(tmp_path):
    runs, out = grid(tmp_path), tmp_path / "report"
    assert main([str(runs), "--out", str(out), "--configuration", "lr0.01"]) == 0
    document = json.loads((out / "report.json").read_text())
    chosen = [c for c in document["configurations"] if c["selected"]]
    assert [c["label"] for c in chosen] == ["lr0.01"] and chosen[0]["why"] == "chosen with --configuration"
    assert document["spearman_seeds"]["rows"][0]["runs"] == ["fit-lr0.01-s33", "fit-lr0.01-s34"]
    assert main([str(runs), "--out", str(out), "--configuration", chosen[0]["id"][:5]]) == 0
    assert json.loads((out / "report.json").read_text())["accuracy"]["rows"][0]["runs"] == ["fit-lr0.01-s33",
                                                                                             "fit-lr0.01-s34"]


def test_unknown_configuration_is_one_line_listing_the_configurations(tmp_path, capsys):
    assert main([str(grid(tmp_path)), "--out", str(tmp_path / "report"), "--configuration", "lr1"]) == 2
    error = capsys.readouterr().err
    assert "--configuration lr1 names no configuration" in error and "lr3e-3 [" in error and "lr0.01 [" in error
    assert not (tmp_path / "report").exists()


def test_a_repeated_seed_of_one_configuration_is_kept_once_the_latest_finished(tmp_path):
    out = tmp_path / "report"
    assert main([str(grid(tmp_path, repeat=True)), "--out", str(out)]) == 0
    document = json.loads((out / "report.json").read_text())
    (clean,) = [r for r in document["accuracy"]["rows"] if r["kind"] == "clean"]
    assert clean["seeds"] == [33, 34] and sorted(clean["runs"]) == ["fit-lr0.003-s33-again", "fit-lr0.003-s34"]
    assert clean["mean"] == pytest.approx(100 * (0.9 + 0.033 + 0.05 + 0.9 + 0.034) / 2)
    left = document["left_out"]
    assert any("seed 33 twice" in why and "kept the latest finished `fit-lr0.003-s33-again`" in why
               for why in left.values())
    assert sum("a repeated seed left out" in why for why in left.values()) == 2  # its two suppression runs


def test_eval_set_takes_the_underscore_spelling_and_the_old_one_with_a_deprecation_line(tmp_path, capsys):
    runs = grid(tmp_path)
    assert main([str(runs), "--out", str(tmp_path / "a"), "--eval_set", "validation"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([str(runs), "--out", str(tmp_path / "b"), "--eval-set", "validation"]) == 0
    assert capsys.readouterr().err.count("--eval-set is deprecated, use --eval_set") == 1
    assert json.loads((tmp_path / "b" / "report.json").read_text())["eval_set"] == "validation"


# ----------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The matplotlib figures of a report over RoBERTa and T5 runs of one layout (fits, suppression, transfer),
    T5's sst2 seeds spread so that mean + sd passes 100%."""
    tmp_path = tmp_path_factory.mktemp("drawn")
    for seed in SEEDS:
        for backbone in ("tiny-roberta", "tiny-t5"):
            for task in ("sst2", "qnli"):
                fit_run(tmp_path, backbone, task, seed)
            for rate in (0.0, 15.0):
                for selection in ("skill", "random"):
                    suppression_run(tmp_path, backbone, "sst2", seed, rate, selection)
        transfer_run(tmp_path, "tiny-t5", "sst2", "qnli", seed)
    runs = tmp_path / "runs"
    for seed, value in ((33, 0.999), (34, 0.80)):
        run = runs / f"fit-tiny-t5-sst2-{seed}"
        update_summary(run, best={**read_summary(run)["best"], "val/acc": value})
    figures = {}
    save = base.Context.save

    def keep(self, fig, figure, *args, **kwargs):
        figures[figure.name] = fig
        return save(self, fig, figure, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base.Context, "save", keep)
        assert main([str(runs), "--out", str(tmp_path / "report")]) == 0
    return figures, json.loads((tmp_path / "report" / "report.json").read_text())


def lines_of(ax):
    """(colour, marker, line style, label) of every labelled data series of an axes: plain lines and the data
    lines of error bars (whose label is on their container); chance and random-pick references left out."""
    lines = [(line, line.get_label()) for line in ax.get_lines()]
    lines += [(c.lines[0], c.get_label()) for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return [(to_hex(line.get_color()), line.get_marker(), line.get_linestyle(), label) for line, label in lines
            if not label.startswith("_") and "chance" not in label and "random (n/100)" not in label]


def test_every_line_of_a_figure_differs_in_colour_and_in_marker_or_line_style(drawn):
    figures, _ = drawn
    checked = 0
    for name, fig in figures.items():
        if not name.startswith(("paper-suppression", "suppression", "overlap", "paper-overlap", "spearman")):
            continue
        for ax in fig.axes:
            series = lines_of(ax)
            if len(series) < 2:
                continue
            checked += 1
            assert len({s[0] for s in series}) == len(series), (name, series)
            assert len({s[1:3] for s in series}) == len(series), (name, series)
    assert checked >= 4


def test_our_suppression_plot_uses_the_colour_blind_safe_scheme_and_shows_accuracy_from_chance_or_zero(drawn):
    figures, _ = drawn
    ours = [fig for name, fig in figures.items() if name.startswith("suppression_")]
    assert ours
    okabe_ito = {style.BLUE, style.VERMILLION, style.ORANGE, style.PURPLE, style.GREEN, style.SKY}
    for fig in ours:
        for ax in fig.axes:
            colours = {s[0] for s in lines_of(ax)}
            assert colours and colours <= {c.lower() for c in okabe_ito}, colours
            low, high = ax.get_ylim()
            assert low <= 50 and high >= 100 and high - low >= 5  # from chance (drawn) or 0, never a zoom
            assert any("chance" in line.get_label() and line.get_ydata()[0] == 50 for line in ax.get_lines())


def test_accuracy_intervals_stay_within_0_and_100_and_the_figure_is_sized_to_its_groups(drawn):
    figures, document = drawn
    ax = figures["accuracy"].axes[0]
    tops = [y for container in ax.containers if getattr(container, "errorbar", None) is not None
            for segment in container.errorbar.lines[2][0].get_segments() for y in segment[:, 1]]
    assert tops and max(tops) <= 100 and min(tops) >= 0
    row = next(r for r in document["accuracy"]["rows"] if r["backbone"] == "tiny-t5" and r["task"] == "sst2"
               and r["kind"] == "clean")
    assert row["mean"] + row["sd"] > 100  # the case the clipping is for
    (entry,) = document["accuracy"]["figures"]
    groups = len({(r["backbone"], r["task"]) for r in document["accuracy"]["rows"] if r["stage"] == "fit"})
    assert (entry["width"], entry["height"]) == (260 + 150 * groups, 560)


def test_every_figure_names_its_configuration_and_has_its_table_in_report_json(drawn):
    _, document = drawn
    figures = [(key, f) for key in TITLES for f in document[key]["figures"]]
    assert len(figures) >= 10
    for key, figure in figures:
        assert document[key]["tables"][figure["table"]], (key, figure)
        assert figure["configuration"].startswith(("configuration", "configurations")) or \
            "configurations, one per" in figure["configuration"], figure


# ----------------------------------------------------------------------------- the README's sequence, for real


@pytest.mark.slow
@pytest.mark.subprocess
def test_readme_quick_starts_then_report_runs_reports_each_family_with_its_two_seeds_as_one_configuration(tmp_path):
    """The RoBERTa (``paper``), T5 (``standard``) and GPT-2 (last position) quick-starts, two seeds each, shortened
    (1 epoch, 64 rows), then the console script ``skill-neurons report runs/`` as the README has it."""
    small = [*QUICK, "--trainer.max_epochs=1", "--data.max_train_samples=64", "--data.max_eval_samples=40"]
    for config in ("quickstart.yaml", "quickstart_t5.yaml", "quickstart_gpt2.yaml"):
        for seed in SEEDS:
            cli_in_process(["fit", "--config", str(ROOT / "configs" / config), *small, f"--seed_everything={seed}"],
                           cwd=tmp_path, check=True)
    proc = subprocess.run([*console_script(), "report", "runs/", "--out", "report/"], cwd=tmp_path,
                          capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote report/report.md" in proc.stdout
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    groups = {g["family"]: g for g in document["groups"]}
    assert {family: (g["layout"], g["analysed_positions"]) for family, g in groups.items()} == {
        "masked_lm": (["paper"], ["prompt"]), "seq2seq": (["standard"], ["prompt"]),
        "causal_lm": (["standard"], ["last"])}
    for group in groups.values():  # real configs: the two seeds of a quick-start are one configuration
        (configuration,) = group["configurations"]
        assert configuration["seeds"] == list(SEEDS) and configuration["why"] == "the only one"
    assert not document["left_out"]
    assert {r["backbone"] for r in document["spearman_seeds"]["rows"]} == {"tiny-roberta", "tiny-t5", "tiny-gpt2"}
