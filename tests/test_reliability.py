"""Nothing lost, nothing silently wrong (issue 15): run-id claims, refused options, corrupt files, resume."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import lightning.pytorch  # noqa: F401 (its log handler binds stderr at import: not inside a capsys test)
import pytest
import torch

from tests.helpers import QUICK, ROOT

MARKER = ROOT / "datamodules" / "data" / "marker"
# In-process fits: a few batches of the marker task, no W&B (these tests are about run directories).
FAST = ["--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=1",
        "--data.max_train_samples=64", "--data.max_eval_samples=64", "--data.batch_size=16",
        "--trainer.logger=false"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    """Run the CLI in-process, expect a project error: exit code 2 and one line on stderr; return it."""
    from skill_neurons.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("skill-neurons: error:")]
    assert exit_.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_backbones):
    """One finished fit run ``X`` (in-process), shared by the tests that must leave it untouched."""
    from skill_neurons.cli import main

    runs = tmp_path_factory.mktemp("shared") / "runs"
    main(["fit", *FAST, f"--runs_dir={runs}", "--run_id=X"])
    return runs / "X"


# ---------------------------------------------------------------- 1. run ids never overwrite a run
def test_fit_on_an_existing_run_id_is_refused_and_leaves_the_run_byte_identical(finished_run, capsys):
    before = snapshot(finished_run)
    assert json.loads(before["summary.json"])["status"] == "finished" and "checkpoints/last.ckpt" in before
    line = refused(["fit", *FAST, f"--runs_dir={finished_run.parent}", "--run_id=X",
                    "--model.learning_rate=0.003"], capsys)
    assert f"run 'X' already exists in {finished_run}" in line
    assert f"--ckpt_path {finished_run / 'checkpoints' / 'last.ckpt'}" in line  # how to resume it
    assert snapshot(finished_run) == before
    # validate/test may not write into a fit run either.
    refused(["validate", *FAST, f"--runs_dir={finished_run.parent}", "--run_id=X"], capsys)
    assert snapshot(finished_run) == before


def test_a_claimed_but_still_empty_run_directory_is_refused(tmp_path, capsys, tiny_backbones):
    """The claim is the atomic ``mkdir``: a second command started while the first has written nothing yet
    (two commands within 2 s) already finds the folder and stops."""
    (tmp_path / "runs" / "Y").mkdir(parents=True)
    refused(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--run_id=Y"], capsys)
    assert list((tmp_path / "runs" / "Y").iterdir()) == []


def test_a_second_fit_in_the_same_process_gets_a_new_run(finished_run, tmp_path, monkeypatch, tiny_backbones):
    """The first fit leaves its id in $SKILL_NEURONS_RUN_ID (for DDP ranks); rank 0 never takes it."""
    from skill_neurons.cli import main
    from skill_neurons.runs import RUN_ID_ENV

    monkeypatch.setenv(RUN_ID_ENV, "X")
    monkeypatch.setenv("SKILL_NEURONS_RUNS_DIR", str(finished_run.parent))
    before = snapshot(finished_run)
    main(["fit", *FAST])
    runs = sorted(p.name for p in finished_run.parent.iterdir())
    assert len(runs) == 2 and "X" in runs
    assert snapshot(finished_run) == before


def test_an_exported_wandb_run_id_of_an_existing_run_is_refused(finished_run, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_RUN_ID", "X")
    before = snapshot(finished_run)
    line = refused(["fit", *FAST, f"--runs_dir={finished_run.parent}"], capsys)
    assert "run 'X' already exists" in line and "unset WANDB_RUN_ID" in line
    assert snapshot(finished_run) == before


def test_other_ranks_join_the_run_that_rank_zero_claimed(finished_run, monkeypatch, tiny_backbones):
    """A process started by the DDP launcher (LOCAL_RANK > 0), or a node's rank 0 (NODE_RANK > 0) given the
    same WANDB_RUN_ID, takes the id and joins the existing folder instead of refusing it."""
    from skill_neurons.lightning_cli import SkillNeuronsCLI
    from skill_neurons.runs import RUN_ID_ENV

    args = [a for a in FAST if not a.startswith(("--trainer.enable", "--trainer.num_sanity"))]
    for env in ({"LOCAL_RANK": "1", RUN_ID_ENV: "X"}, {"NODE_RANK": "1", "WANDB_RUN_ID": "X"}):
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            cli = SkillNeuronsCLI(args=[*args, f"--runs_dir={finished_run.parent}"], run=False)
        assert cli._run_id == "X" and cli._run_dir == finished_run


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", ".hidden", "x" * 129])
def test_run_ids_with_path_characters_are_refused(run_id, tmp_path, capsys):
    line = refused(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", f"--run_id={run_id}", "--trainer.logger=false"],
                   capsys)
    assert "is not a run id" in line
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- 2. set names
@pytest.mark.parametrize("name, message", [
    ("validation", "has the name of a clean split"), ("Test", "has the name of a clean split"),
    ("a/b", "use letters, digits"), ("marker_typo", "already has as an adversarial set"),
])
def test_adversarial_set_names_that_clash_are_refused_before_the_run(name, message, tmp_path, capsys,
                                                                     tiny_backbones):
    extra = f"--data.extra_adversarial={{'{name}': '{MARKER / 'adversarial.jsonl'}'}}"
    line = refused(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", extra], capsys)
    assert message in line
    assert not (tmp_path / "runs").exists()


def test_adversarial_set_names_differing_only_in_case_are_refused():
    from datamodules import PromptDataModule
    from datamodules.tasks import TaskError

    file = str(MARKER / "adversarial.jsonl")
    with pytest.raises(TaskError, match="differ only in case"):
        PromptDataModule(task="marker", extra_adversarial={"typos": file, "Typos": file})


# ---------------------------------------------------------------- option errors: one line, exit 2
@pytest.mark.parametrize("option, message", [
    ("--data.task=sst", "unknown task 'sst' — known tasks: sst2"),
    ("--model.backbone=no-such-model", "cannot load backbone 'no-such-model'"),
    ("--model.prompt_length=0", "--model.prompt_length=0: give a whole number of at least 1"),
    ("--data.max_train_samples=0", "--data.max_train_samples=0: give a whole number of at least 1"),
    ("--data.max_eval_samples=-3", "--data.max_eval_samples=-3: give a whole number of at least 1"),
    ("--data.batch_size=0", "--data.batch_size=0: give a whole number of at least 1"),
    ("--data.eval_batch_size=0", "--data.eval_batch_size=0: give a whole number of at least 1"),
])
def test_project_errors_are_one_line_with_exit_code_2(option, message, tmp_path, capsys, tiny_backbones):
    line = refused(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", option], capsys)
    assert message in line
    assert not (tmp_path / "runs").exists()  # the claimed run directory was given back


def test_debug_switch_shows_the_traceback(tmp_path, monkeypatch, tiny_backbones):
    from datamodules.tasks import TaskError
    from skill_neurons.cli import DEBUG_ENV, main

    with pytest.raises(TaskError, match="unknown task"):
        main(["fit", *FAST, f"--runs_dir={tmp_path}", "--data.task=sst", "--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(TaskError, match="unknown task"):
        main(["fit", *FAST, f"--runs_dir={tmp_path}", "--data.task=sst"])


def test_sizes_are_checked_by_the_datamodule_itself():
    from datamodules import PromptDataModule
    from records.errors import OptionError

    for bad in ({"batch_size": 0}, {"batch_size": None}, {"eval_batch_size": 0}, {"max_train_samples": 0},
                {"prompt_length": 0}, {"max_text_length": 0}, {"batch_size": True}):
        with pytest.raises(OptionError, match="give a whole number of at least 1"):
            PromptDataModule(task="marker", **bad)


# ---------------------------------------------------------------- lesser
def test_summary_json_has_the_mode_of_the_other_run_files(finished_run):
    mode = stat.S_IMODE((finished_run / "summary.json").stat().st_mode)
    assert mode == stat.S_IMODE((finished_run / "config.yaml").stat().st_mode)
    assert mode == 0o666 & ~_umask()  # what open() gives any new file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- 3. an interrupted analysis, statuses
def _fail_analysis(monkeypatch, error: BaseException):
    from callbacks.skill_neurons import SkillNeuronCallback

    def analyse(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(SkillNeuronCallback, "analyse", analyse)


def test_a_run_killed_during_the_analysis_is_not_finished_and_analyse_completes_it(tmp_path, monkeypatch,
                                                                                  tiny_backbones):
    from skill_neurons.cli import main

    runs = tmp_path / "runs"
    with monkeypatch.context() as m:
        _fail_analysis(m, RuntimeError("killed during the analysis"))
        with pytest.raises(RuntimeError, match="killed during the analysis"):
            main(["fit", *FAST, f"--runs_dir={runs}", "--run_id=Z"])
    run = runs / "Z"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "killed during the analysis" in summary["error"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "skill_neurons").exists()
    last = snapshot(run / "checkpoints")

    main(["analyse", str(run)])  # = fit --config runs/Z/config.yaml --ckpt_path runs/Z/checkpoints/last.ckpt
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["missing"] is None
    assert (run / "skill_neurons" / "validation.safetensors").is_file()
    assert (run / "skill_neurons" / "marker_typo.safetensors").is_file()
    assert summary["skill_neurons"]["sets"]["validation"]["examples"] == 64
    assert summary["fit_metrics"]["val/acc"] == summary["history"][-1]["val/acc"]  # kept from the trained epoch
    assert summary["global_step"] == 4 and [h["epoch"] for h in summary["history"]] == [0]  # nothing retrained
    assert snapshot(run / "checkpoints") == last


def test_a_run_without_its_promised_analysis_is_incomplete(tmp_path, monkeypatch, tiny_backbones):
    from callbacks.skill_neurons import SkillNeuronCallback
    from skill_neurons.cli import main

    monkeypatch.setattr(SkillNeuronCallback, "analyse", lambda self, *args, **kwargs: {})
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *FAST, f"--runs_dir={tmp_path}", "--run_id=I"])
    assert exit_.value.code == 3  # not finished: a scheduler must not take it for a success
    summary = json.loads((tmp_path / "I" / "summary.json").read_text())
    assert summary["status"] == "incomplete"
    assert summary["missing"] == ["skill_neurons/validation.safetensors", "skill_neurons/marker_typo.safetensors"]


def test_ctrl_c_marks_the_run_interrupted(tmp_path, monkeypatch, tiny_backbones):
    import signal

    from skill_neurons.cli import main

    handler = signal.getsignal(signal.SIGINT)
    try:
        with monkeypatch.context() as m:
            _fail_analysis(m, KeyboardInterrupt())
            with pytest.raises(SystemExit) as exit_:
                main(["fit", *FAST, f"--runs_dir={tmp_path}", "--run_id=C"])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    summary = json.loads((tmp_path / "C" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary.get("error") is None
    assert exit_.value.code == 130  # 128 + SIGINT, as a shell reports it (Lightning exits 1)


# ---------------------------------------------------------------- resume: the same trajectory
@pytest.mark.slow
def test_resume_from_an_epoch_end_checkpoint_is_bit_identical(tmp_path, tiny_backbones):
    """3 epochs straight vs 2 epochs, then a resume of that run's last.ckpt to 3 epochs (shuffled training
    set): the same prompt, optimizer state and per-epoch metrics, bit for bit."""
    from skill_neurons.cli import main

    common = [*FAST, "--data.max_train_samples=96", f"--runs_dir={tmp_path}"]
    main(["fit", *common, "--trainer.max_epochs=3", "--run_id=straight"])
    main(["fit", *common, "--trainer.max_epochs=2", "--run_id=resumed"])
    main(["fit", *common, "--trainer.max_epochs=3", f"--ckpt_path={tmp_path / 'resumed/checkpoints/last.ckpt'}"])
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 18
    assert torch.equal(a["state_dict"]["prompt.weight"], b["state_dict"]["prompt.weight"])
    for x, y in zip(a["optimizer_states"][0]["state"][0].values(), b["optimizer_states"][0]["state"][0].values()):
        assert torch.equal(x, y)
    history = [json.loads((tmp_path / r / "summary.json").read_text())["history"] for r in ("straight", "resumed")]
    assert history[0] == history[1] and len(history[0]) == 3


def test_without_the_rng_state_a_resume_repeats_the_first_epochs_order(tmp_path):
    """Why the RNG state travels with the checkpoint: after seed_everything, the next epoch's shuffle is the
    first epoch's again; restored, it is the order the uninterrupted run would have drawn."""
    from lightning import seed_everything

    from callbacks.rng_state import RNGState

    def order():
        return torch.randperm(10).tolist()

    seed_everything(33)
    first = order()
    saved = RNGState().state_dict()
    second = order()
    seed_everything(33)  # what a resumed process does first
    assert order() == first != second
    seed_everything(33)
    RNGState().load_state_dict(torch.load(_roundtrip(saved, tmp_path), weights_only=True))
    assert order() == second


def _roundtrip(state, tmp_path) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)  # as in a checkpoint, read back with weights_only=True
    return path


# ---------------------------------------------------------------- 5. null and empty texts
def test_null_and_empty_texts_are_dropped_counted_and_recorded(tmp_path, capsys):
    from datamodules.sources import prepare_split
    from datamodules.tasks import Source, get_task

    rows = [{"sentence": "a banana here", "label": 1}, {"sentence": None, "label": 0}, {"sentence": "  ", "label": 1},
            {"sentence": "", "label": 0}, {"sentence": "no fruit", "label": 0}]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("marker")
    with pytest.warns(UserWarning, match=r"dropped 3 row\(s\) with a null or empty text \(rows 1, 2, 3\)"):
        ds, record = prepare_split(task, Source(file=str(file)), "train", str(tmp_path / "cache"))
    assert ds["sentence"] == ["a banana here", "no fruit"] and ds["idx"] == [0, 4]
    assert "None" not in ds["sentence"] and record["dropped_empty_text"] == 3 and record["rows"] == 2


# ---------------------------------------------------------------- 7. the cache follows the content
def test_an_edited_file_with_the_same_size_and_time_is_read_again(tmp_path):
    from datamodules.sources import prepare_split
    from datamodules.tasks import Source, get_task

    file = tmp_path / "validation.jsonl"
    file.write_text('{"sentence": "one banana", "label": 1}\n{"sentence": "two apples", "label": 0}\n')
    stat_ = file.stat()
    first, record = prepare_split(get_task("marker"), Source(file=str(file)), "validation", str(tmp_path / "c"))
    file.write_text('{"sentence": "one cherry", "label": 0}\n{"sentence": "two banana", "label": 1}\n')  # same size
    os.utime(file, ns=(stat_.st_atime_ns, stat_.st_mtime_ns))
    assert file.stat().st_size == stat_.st_size and file.stat().st_mtime_ns == stat_.st_mtime_ns
    second, record2 = prepare_split(get_task("marker"), Source(file=str(file)), "validation", str(tmp_path / "c"))
    assert first["sentence"] == ["one banana", "two apples"] and second["sentence"] == ["one cherry", "two banana"]
    assert second["label"] == [0, 1] and record2["sha256"] != record["sha256"]


# ---------------------------------------------------------------- errors a user can act on: data files
@pytest.mark.parametrize("name, content, message", [
    ("latin.csv", "sentence,label\ngood,1\ncaf\xe9 bad,0\n".encode("latin-1"),
     "line 3 is not UTF-8 (byte 0xe9 at column 4) — save the file as UTF-8"),
    ("broken.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c" "label": 1}\n',
     "line 3 is not valid JSON (Expecting ',' delimiter at column 14)"),
    ("empty.csv", b"", "is empty — point it at a file with examples"),
    ("folder", None, "is a directory — give a file in it"),
])
def test_bad_data_files_are_one_line_naming_the_file_and_line(name, content, message, tmp_path, capsys,
                                                               tiny_backbones):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    line = refused(["fit", *FAST, f"--runs_dir={tmp_path / 'runs'}", f"--data.files={{validation: '{path}'}}"],
                   capsys)
    assert message in line and str(path) in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- corrupt model files
@pytest.mark.parametrize("kind", ["truncated", "random bytes", "pickle with code"])
def test_a_corrupt_checkpoint_is_one_line_without_unpickler_advice(kind, finished_run, tmp_path, capsys):
    import pickle

    good = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    content = {"truncated": good[: len(good) // 2], "random bytes": os.urandom(4096),
               "pickle with code": pickle.dumps(Path("x"))}[kind]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    line = refused(["validate", *FAST, f"--runs_dir={tmp_path / 'runs'}", f"--ckpt_path={bad}"], capsys)
    assert f"checkpoint '{bad}' cannot be read" in line and "weights_only" not in line
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_of_another_family_is_refused(finished_run, tmp_path, capsys, tiny_backbones):
    line = refused(["validate", "--config", str(ROOT / "configs/quickstart_t5.yaml"), *FAST[2:],
                    f"--runs_dir={tmp_path / 'runs'}", f"--ckpt_path={finished_run / 'checkpoints/best.ckpt'}"],
                   capsys)
    assert "holds a prompt of MaskedLMPromptTuning on backbone 'tiny-roberta'" in line
    assert "the config uses Seq2SeqPromptTuning on 'tiny-t5'" in line
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_neuron_file_is_named(finished_run, tmp_path, capsys):
    from callbacks.skill_neurons import SkillNeuronError, load_neuron_file

    good = (finished_run / "skill_neurons" / "validation.safetensors").read_bytes()
    bad = tmp_path / "skill_neurons" / "validation.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 3])
    with pytest.raises(SkillNeuronError, match=f"skill-neuron file '{bad}' cannot be read"):
        load_neuron_file(bad)
    line = refused(["validate", *FAST, f"--runs_dir={tmp_path / 'runs'}", "--suppression.rate=5",
                    f"--suppression.neurons=[{tmp_path}]", f"--ckpt_path={finished_run / 'checkpoints/best.ckpt'}"],
                   capsys)
    assert f"skill-neuron file '{bad}' cannot be read" in line


# ---------------------------------------------------------------- 8. W&B with a key and no network
@pytest.mark.parametrize("key, why", [("k" * 40, "CommError"), ("short-key!", "AuthenticationError")])
def test_wandb_without_network_or_with_a_bad_key_goes_offline_in_bounded_time(key, why, tmp_path, monkeypatch,
                                                                              capsys):
    """A 40-character key and an unreachable server: W&B's init_timeout bounds the wait (here 2 s through
    $WANDB_INIT_TIMEOUT; the CLI's default is 30 s), then the run is offline and logs. A malformed key fails
    at once, the same way."""
    import time

    import wandb

    from lightning_modules.tracking import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb.teardown()  # W&B's process-wide settings read the environment once: start from this test's
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no network
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    logger = WandbLogger(project="p", save_dir=str(tmp_path), id="offline1")
    start = time.monotonic()
    run = logger.experiment
    waited = time.monotonic() - start
    run.log({"val/acc": 0.5})
    assert run.settings.mode in ("offline", "dryrun") and waited < 60, waited
    err = capsys.readouterr().err
    assert f"W&B could not start online ({why}" in err and "logging offline" in err
    run.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*-offline1/run-offline1.wandb"))


# ---------------------------------------------------------------- 4. wandb sync names every segment
def test_after_a_resume_the_sync_command_names_every_offline_segment(tmp_path, capsys, tiny_backbones):
    from skill_neurons.cli import main

    args = [a for a in FAST if a != "--trainer.logger=false"] + [f"--runs_dir={tmp_path}", "--run_id=W"]
    main(["fit", *args])
    main(["fit", *args[:-1], "--trainer.max_epochs=2", f"--ckpt_path={tmp_path / 'W/checkpoints/last.ckpt'}"])
    segments = sorted((tmp_path / "W" / "wandb").glob("offline-run-*-W"))
    assert len(segments) == 2
    command = f"wandb sync {segments[0]} {segments[1]}"
    assert command in capsys.readouterr().err
    assert json.loads((tmp_path / "W" / "summary.json").read_text())["wandb"]["sync_command"] == command
