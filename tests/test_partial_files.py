"""No partial file ever replaces a good one (issue 27): every file the project writes goes through a temp file in
its own folder, fsync and rename; a full disk (an ``ENOSPC`` injected where the bytes reach the disk) ends the
run with one line naming the file and the free space, status ``failed``, the previous files byte-identical; a
``summary.json`` that does not parse is never overwritten."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import QUICK, ROOT, subprocess_env

FAST = ["--config", str(ROOT / "configs/quickstart.yaml"), *QUICK, "--trainer.max_epochs=1",
        "--data.max_train_samples=64", "--data.max_eval_samples=40", "--trainer.logger=false"]


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (temp files included: none may be left behind)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_full(monkeypatch, matches) -> list[str]:
    """``fsync`` of any file whose name (the temp file's own, ``.<name>-<hex>.tmp``) ``matches`` fails with
    ENOSPC, as on a full disk; returns the list of files refused."""
    real, refused = os.fsync, []

    def fsync(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if matches(target):
            refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return refused


def ends_with_one_line(argv: list[str], capsys, code: int = 1) -> str:
    from skill_neurons.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("skill-neurons: error:")]
    assert exit_.value.code == code, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def finished(tmp_path_factory, tiny_backbones):
    """A finished 1-epoch fit run (in-process, no W&B), fresh for each test: they try to damage it."""
    from skill_neurons.cli import main

    runs = tmp_path_factory.mktemp("partial") / "runs"
    main(["fit", *FAST, f"--runs_dir={runs}", "--run_id=X"])
    run = runs / "X"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    return run


# ---------------------------------------------------------------- the atomic writer itself
@pytest.mark.parametrize("err, words", [
    (errno.ENOSPC, "No space left on device"), (errno.EROFS, "read-only"), (errno.EACCES, "may not write"),
])
def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_the_old_file(err, words, tmp_path, monkeypatch):
    from records import files as run_files
    from records.files import WriteError, atomic_write

    path = tmp_path / "table.csv"
    path.write_text("the good version\n")
    if err == errno.ENOSPC:
        disk_full(monkeypatch, lambda target: ".table.csv-" in target)
    else:  # the temp file cannot even be created (read-only mount, no permission; root ignores chmod)
        monkeypatch.setattr(run_files.os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(err, "denied")))
    with pytest.raises(WriteError) as caught:
        atomic_write(path, lambda f: f.write("half of a new vers"))
    message = str(caught.value)
    assert message.startswith(f"cannot write {path}: ") and words in message
    assert re.search(r"\(([\d,]+ KiB free on its filesystem)\)", message)
    assert "previous version is intact" in message
    assert path.read_text() == "the good version\n" and os.listdir(tmp_path) == ["table.csv"]  # no temp left


def test_the_backup_is_the_previous_version(tmp_path):
    from records.files import atomic_write, backup_path

    path = tmp_path / "state.json"
    for text in ("one", "two", "three"):
        atomic_write(path, lambda f, text=text: f.write(text), backup=True)
    assert path.read_text() == "three" and backup_path(path).read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.bak"]


# ---------------------------------------------------------------- a full disk at each write site of a run
def test_a_full_disk_while_writing_a_checkpoint_fails_the_run_and_keeps_the_previous_checkpoints(
        finished, monkeypatch, capsys):
    before = hashes(finished / "checkpoints")
    refused = disk_full(monkeypatch, lambda target: f"{os.sep}checkpoints{os.sep}" in target)
    line = ends_with_one_line(["fit", *FAST, "--trainer.max_epochs=2",
                               f"--ckpt_path={finished / 'checkpoints' / 'last.ckpt'}"], capsys)
    assert refused and re.search(rf"cannot write {finished / 'checkpoints'}/(best|last)\.ckpt: No space left on "
                                 r"device \([\d,]+ KiB free", line), line
    assert hashes(finished / "checkpoints") == before  # byte-identical, no temp file left
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert str(finished / "checkpoints") in summary["error"]


def test_checkpoints_are_written_beside_themselves_not_through_the_system_temp_folder(finished, monkeypatch):
    """Lightning's writer (fsspec) wrote to the system temp folder and moved the file: across filesystems a copy
    over the old last.ckpt. Here the temp file is in checkpoints/ itself and is renamed."""
    from skill_neurons.cli import main

    temps = []
    real = os.replace

    def replace(src, dst):
        temps.append((Path(src).parent, Path(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    main(["fit", *FAST, "--trainer.max_epochs=2", f"--ckpt_path={finished / 'checkpoints' / 'last.ckpt'}"])
    written = [(folder, dst) for folder, dst in temps if dst.suffix == ".ckpt"]
    assert {dst.name for _, dst in written} >= {"last.ckpt"}
    assert all(folder == finished / "checkpoints" for folder, _ in written)


@pytest.mark.parametrize("name", ["validation.safetensors", "top_neurons.csv", "per_layer_predictivity.png"])
def test_a_full_disk_during_the_analysis_outputs_keeps_the_previous_file(name, finished, monkeypatch, capsys):
    before = hashes(finished / "skill_neurons")
    disk_full(monkeypatch, lambda target: f".{name}-" in target)
    line = ends_with_one_line(["analyse", str(finished), "--trainer.logger=false"], capsys)
    assert f"cannot write {finished / 'skill_neurons' / name}: No space left on device" in line
    after = hashes(finished / "skill_neurons")
    assert after[name] == before[name] and set(after) == set(before)  # the old file, no temp file left
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["status"] == "failed" and name in summary["error"]


def test_a_full_disk_while_writing_a_prediction_table_fails_the_predict_run(finished, monkeypatch, capsys):
    runs = finished.parent / "predicted"
    disk_full(monkeypatch, lambda target: ".validation.csv-" in target)
    line = ends_with_one_line(["predict", "--from_run", str(finished), "--trainer.logger=false",
                               f"--runs_dir={runs}"], capsys)
    (run,) = runs.iterdir()
    assert f"cannot write {run / 'predictions' / 'validation.csv'}: No space left on device" in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "validation.csv" in summary["error"]
    assert not [f for f in hashes(run) if f.endswith(".tmp")]


@pytest.mark.parametrize("name", ["summary.json", "config.yaml"])
def test_a_full_disk_while_writing_the_summary_or_config_keeps_them(name, finished, monkeypatch, capsys):
    before = hashes(finished)
    disk_full(monkeypatch, lambda target: f".{name}-" in target)
    line = ends_with_one_line(["analyse", str(finished), "--trainer.logger=false"], capsys)
    assert f"cannot write {finished / name}: No space left on device" in line
    assert hashes(finished)[name] == before[name]
    assert not [f for f in hashes(finished) if f.endswith(".tmp")]


def test_a_full_disk_while_saving_the_sweep_state_keeps_the_previous_state(tmp_path, monkeypatch):
    from records.files import WriteError
    from skill_neurons.sweep.state import read_state, save_state

    path = tmp_path / "state.json"
    save_state(path, {"sweep_id": "s1", "trials": [1]})
    save_state(path, {"sweep_id": "s1", "trials": [1, 2]})
    before = hashes(tmp_path)
    disk_full(monkeypatch, lambda target: ".state.json-" in target)
    with pytest.raises(WriteError, match="cannot write .*state.json: No space left on device"):
        save_state(path, {"sweep_id": "s1", "trials": [1, 2, 3]})
    assert hashes(tmp_path) == before and read_state(path)[0]["trials"] == [1, 2]


def test_no_project_writer_bypasses_the_atomic_writer():
    """Every write of a project file goes through ``atomic_write`` (the argument of its lambda): no direct
    ``write_text``/``write_bytes``/``savefig``/``torch.save`` to a path, no ``open(..., "w")``. (A trial's log,
    opened ``"ab"``, is a stream that grows: nothing to replace.)"""
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|\.savefig\(|torch\.save\(|\bopen\([^)]*[\"']wb?[\"']")
    allowed = {"datamodules/synthetic.py",  # the generator of the shipped data files (a developer's script)
               "lightning_modules/backbones.py"}  # a tiny preset is built in a temp folder that is renamed
    found = []
    for package in ("callbacks", "datamodules", "lightning_modules", "skill_neurons"):
        for file in sorted((ROOT / package).rglob("*.py")):
            name = str(file.relative_to(ROOT))
            if name in allowed or "/data/" in name:
                continue
            for number, line in enumerate(file.read_text().splitlines(), 1):
                code = line.split("#")[0]
                in_memory = "torch.save(checkpoint, buffer)" in code  # a BytesIO, then written atomically
                if direct.search(code) and "lambda f" not in code and not in_memory and not code.lstrip().startswith(
                        ('"', "'")):
                    found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- a real full disk (a small tmpfs)
# In a private mount namespace (root only): the finished run is copied onto a 1 MiB tmpfs that a filler file
# leaves FREE_KB free, the command runs there, and the hashes, summary and listing are copied out before the
# namespace (and its tmpfs) goes.
ON_TMPFS = r"""
set -e
mount -t tmpfs -o size=1m tmpfs "$M"
mkdir "$M/runs" && cp -a "$RUN" "$M/runs/X"
avail=$(df -k --output=avail "$M" | tail -1)
head -c $(( (avail - FREE_KB) * 1024 )) /dev/zero > "$M/filler"
(cd "$M/runs/X" && sha256sum checkpoints/* skill_neurons/* > "$OUT/before.txt")
set +e
"$PY" -m skill_neurons.cli "$@" > "$OUT/stdout.txt" 2> "$OUT/stderr.txt"
echo $? > "$OUT/rc.txt"
(cd "$M/runs/X" && sha256sum checkpoints/* skill_neurons/* > "$OUT/after.txt" && cp summary.json "$OUT/" \
 && ls -aR . > "$OUT/ls.txt")
df -k --output=avail "$M" | tail -1 > "$OUT/free.txt"
"""


def on_a_full_tmpfs(run: Path, tmp: Path, free_kb: int, *args: str) -> Path:
    mount, out = tmp / "small-disk", tmp / "out"
    mount.mkdir()
    out.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if os.geteuid() != 0 or probe.returncode != 0:
        pytest.skip("a private tmpfs needs root and unshare(1): the injected-ENOSPC tests above cover this")
    args = [a.replace("{M}", str(mount / "runs" / "X")).replace("{RUNS}", str(mount / "runs")) for a in args]
    proc = subprocess.run(["unshare", "-m", "sh", "-c", ON_TMPFS, "sh", *args], capture_output=True, text=True,
                          timeout=600, env=subprocess_env({"M": str(mount), "RUN": str(run), "OUT": str(out),
                                                           "FREE_KB": str(free_kb), "PY": sys.executable}))
    assert (out / "rc.txt").exists(), proc.stderr
    return out


@pytest.mark.subprocess
@pytest.mark.parametrize("free_kb, args, written", [
    (20, ["fit", *FAST, "--trainer.max_epochs=2", "--ckpt_path={M}/checkpoints/last.ckpt"],
     r"checkpoints/(best|last)\.ckpt"),
    (36, ["analyse", "{M}", "--trainer.logger=false", "--runs_dir={RUNS}"], r"skill_neurons/validation\.safetensors"),
])
def test_on_a_really_full_disk_the_run_fails_in_one_line_and_its_files_stay_whole(free_kb, args, written, finished,
                                                                                    tmp_path):
    out = on_a_full_tmpfs(finished, tmp_path, free_kb, *args)
    err = (out / "stderr.txt").read_text()
    assert (out / "rc.txt").read_text().strip() == "1", err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("skill-neurons: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(rf"cannot write \S+/runs/X/{written}: No space left on device \([\d,]+ KiB free", lines[0])
    # every checkpoint and neuron file byte-identical (config.yaml is the resumed command's, rewritten on purpose)
    assert (out / "after.txt").read_text() == (out / "before.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert ".tmp" not in (out / "ls.txt").read_text()


# ---------------------------------------------------------------- a summary that does not parse
def test_analyse_never_overwrites_a_truncated_summary(finished, capsys):
    path = finished / "summary.json"
    assert json.loads((finished / "summary.json.bak").read_text())["run_id"] == "X"  # the previous version
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as a full disk left it
    truncated = path.read_bytes()
    line = ends_with_one_line(["analyse", str(finished)], capsys, code=2)
    assert f"{path} does not parse" in line and "left as it is" in line
    assert f"cp {finished / 'summary.json.bak'} {path}" in line
    assert path.read_bytes() == truncated


def test_a_resume_never_overwrites_a_truncated_summary(finished, capsys):
    path = finished / "summary.json"
    path.write_text('{"run_id": "X", "history": [')
    ends_with_one_line(["fit", *FAST, f"--ckpt_path={finished / 'checkpoints' / 'last.ckpt'}"], capsys, code=2)
    assert path.read_text() == '{"run_id": "X", "history": ['


def test_update_summary_refuses_a_summary_that_does_not_parse(tmp_path):
    from records.summary import SummaryError, update_summary

    (tmp_path / "summary.json").write_text("[1, 2")
    with pytest.raises(SummaryError, match="does not parse .* restore it or move it away"):
        update_summary(tmp_path, status="finished")
    assert (tmp_path / "summary.json").read_text() == "[1, 2"
    shutil.rmtree(tmp_path)
    assert update_summary(tmp_path, status="running") == {"status": "running"}  # a new run starts one
