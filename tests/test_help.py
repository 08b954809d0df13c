"""Every command's ``--help``, the light top-level help, renamed flags and where ``--suppression.*`` is offered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli_in_process, subprocess_env

HEAVY = ("lightning", "pytorch_lightning", "transformers", "datasets", "torch")

# (arguments, the start of the usage line that command prints)
HELPS = [
    (["--help"], "usage: skill-neurons [-h] <command>"),
    (["-h"], "usage: skill-neurons [-h] <command>"),
    (["analyse", "--help"], "usage: skill-neurons analyse [-h] RUN"),
    (["analyse", "runs/nope", "--help"], "usage: skill-neurons analyse [-h] RUN"),
    (["analyse", "-h", "runs/nope"], "usage: skill-neurons analyse [-h] RUN"),
    (["sweep", "--help"], "usage: skill-neurons sweep"),
    (["report", "--help"], "usage: skill-neurons report"),
    (["import-prompt", "--help"], "usage: skill-neurons import-prompt"),
    (["export-peft", "--help"], "usage: skill-neurons export-peft"),
    (["import-peft", "--help"], "usage: skill-neurons import-peft"),
    (["wandb-view", "--help"], "usage: skill-neurons wandb-view"),
    (["attack", "--help"], "usage: skill-neurons attack"),
    (["fit", "--help"], "usage: skill-neurons [options] fit"),
    (["validate", "--help"], "usage: skill-neurons [options] validate"),
    (["validate", "--from_run", "runs/nope", "--help"], "usage: skill-neurons [options] validate"),
    (["test", "-h"], "usage: skill-neurons [options] test"),
]


@pytest.mark.parametrize("args,usage", HELPS, ids=[" ".join(a) for a, _ in HELPS])
def test_every_command_prints_its_own_help_and_exits_0(args, usage, tmp_path):
    proc = cli_in_process(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(usage), proc.stdout[:300]
    assert proc.stderr == ""


def test_top_level_help_lists_every_command_and_analyse_help_says_what_it_runs(tmp_path):
    out = cli_in_process(["--help"], cwd=tmp_path).stdout
    for command in ("fit", "validate", "test", "analyse", "sweep", "report", "import-prompt", "wandb-view",
                    "export-peft", "import-peft", "attack"):
        assert f"\n  {command} " in out, command
    analyse = cli_in_process(["analyse", "--help"], cwd=tmp_path).stdout
    assert "checkpoints/last.ckpt is resumed with its own config.yaml" in analyse
    assert "skill-neurons fit --help lists them" in analyse


@pytest.mark.parametrize("args,message", [([], "the following arguments are required: <command>"),
                                          (["fitt"], "invalid choice: 'fitt'")])
def test_a_missing_or_unknown_command_is_one_usage_error(args, message, tmp_path):
    proc = cli_in_process(args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.startswith("usage: skill-neurons [-h] <command>")


@pytest.mark.subprocess
def test_top_level_help_loads_no_lightning_transformers_or_datasets(tmp_path):
    """``skill-neurons --help`` and ``-h`` (and ``analyse --help``) in a fresh interpreter: none of the heavy
    libraries is imported, and the help itself takes well under a second."""
    script = (
        "import json, sys, time\n"
        "from skill_neurons.cli import main\n"
        "times = []\n"
        "for args in (['--help'], ['-h'], ['analyse', '--help']):\n"
        "    start = time.perf_counter()\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit_:\n"
        "        assert exit_.code == 0, (args, exit_.code)\n"
        "    times.append(time.perf_counter() - start)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps({'heavy': heavy, 'times': times}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: skill-neurons [-h] <command>" in proc.stdout
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert max(result["times"]) < 1.0, result["times"]
    # The console script's own entry point, as a user starts it
    proc = subprocess.run([sys.executable, "-m", "skill_neurons", "--help"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: skill-neurons [-h] <command>" in proc.stdout


def test_old_spellings_are_rewritten_with_one_deprecation_line(capsys):
    from skill_neurons.flags import old_spellings

    renamed = {"--mask-slot": "--mask_slot", "--kill-delay": "--kill_delay"}
    argv = ["x", "--mask-slot", "keep", "--kill-delay=3", "--mask-slot=drop", "--", "--mask-slot"]
    assert old_spellings(argv, renamed, "prog") == ["x", "--mask_slot", "keep", "--kill_delay=3", "--mask_slot=drop",
                                                    "--", "--mask-slot"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: deprecated spelling: --mask-slot -> --mask_slot, "
                                                   "--kill-delay -> --kill_delay (")
    assert old_spellings(["--mask_slot", "keep"], renamed, "prog") == ["--mask_slot", "keep"]
    assert capsys.readouterr().err == ""


def test_sweep_still_takes_kill_delay_with_a_hyphen(tmp_path, capsys):
    from skill_neurons.sweep.command import main

    # Parsed (the runner would otherwise stop at argparse's "unrecognized arguments"): the status of a folder
    # without a sweep is the sweep's own one-line error.
    assert main(["--kill-delay", "2", "--status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("skill-neurons sweep: deprecated spelling: --kill-delay -> --kill_delay (the project's flags "
                      "use underscores, as LightningCLI's do; the old spelling will stop working in the next release)")
    assert err[1].startswith(f"skill-neurons sweep: error: no sweep in {tmp_path}") and len(err) == 2


# ---------------------------------------------------------------------------- --suppression.* only where it applies
def test_fit_help_leaves_out_suppression_and_validate_and_test_help_list_it(tmp_path):
    fit = cli_in_process(["fit", "--help"], cwd=tmp_path).stdout
    assert "--suppression" not in fit and "Perturbs FFN units" not in fit
    assert "--checkpoint.monitor" in fit and "--summary.run_dir" in fit  # the other groups stay
    for stage in ("validate", "test"):
        out = cli_in_process([stage, "--help"], cwd=tmp_path).stdout
        for option in ("--suppression.rate RATE", "--suppression.selection {skill,random}",
                       "--suppression.perturbation {zero,gaussian,mean}", "--suppression.neuron_source"):
            assert option in out, (stage, option)
        assert "Perturbs FFN units during ``validate``/``test``" in out


def test_fit_refuses_suppression_in_one_line_before_any_run_folder_and_still_reads_its_keys(tmp_path):
    config = str(ROOT / "configs/quickstart.yaml")
    proc = cli_in_process(["fit", "--config", config, "--suppression.rate=5"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1:] == [  # after Lightning's "Seed set to 33"
        "skill-neurons: error: --suppression.* applies to validate and test (it perturbs the evaluation of a trained "
        "prompt), not fit — use skill-neurons validate --from_run runs/<id> --suppression.rate=...  (--debug or "
        "SKILL_NEURONS_DEBUG=1 shows the traceback)"]
    assert not (tmp_path / "runs").exists()
    # A fit run's config.yaml written before the options left fit's help holds them (off): a fit still reads it
    # (resume, analyse); one written now leaves them out (jsonargparse does not save hidden options).
    earlier = tmp_path / "earlier.yaml"
    earlier.write_text("suppression:\n  rate: null\n  selection: skill\n  perturbation: zero\n  std: 0.1\n"
                       "  neurons: null\n  eval_set: validation\n  adversarial_neurons: clean\n  part: encoder\n"
                       "  seed: 0\n  neuron_source: own\n")
    proc = cli_in_process(["fit", "--config", config, "--config", str(earlier), "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0 and "\nsuppression: {}\n" in proc.stdout
