"""``skill-neurons sweep``: the command — run a sweep file, or print the table of a sweep directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skill_neurons.flags import old_spellings
from skill_neurons.sweep import cluster
from skill_neurons.sweep.config import KILL_DELAY_S, STATE_FILE, SweepError
from skill_neurons.sweep.processes import RunnerLock
from skill_neurons.sweep.runner import SweepRunner
from skill_neurons.sweep.state import Trial, format_table, objective_of, read_state

RENAMED = {"--kill-delay": "--kill_delay"}  # old spelling -> new (kept for one release)


def print_status(directory: Path, out=None) -> int:
    out = out or sys.stdout
    state, note = read_state(directory / STATE_FILE)
    if "sweep_id" not in state:
        raise SweepError(f"no sweep in {directory} ({directory / STATE_FILE} is missing) — give the --dir of a sweep")
    if note:
        print(note, file=out)
    trials = [Trial.from_json(t) for t in state.get("trials", [])]
    metric = (state.get("config") or {}).get("metric") or {}
    holder = RunnerLock.holder(directory)
    jobs = {t.attempts[-1].job_id: t for t in trials if t.attempts and t.attempts[-1].job_id}
    active = [j for j, t in jobs.items() if t.state == "running"]
    states = cluster.job_states(state.get("executor"), directory, active)
    for job_id, trial in jobs.items():  # ended jobs: their state as the runner recorded it
        trial.attempts[-1].job_state = states.get(job_id) or trial.attempts[-1].job_state

    if holder is None:
        for trial in trials:  # what a restart would do with them (a queued or running SLURM job is followed)
            if trial.state == "running" and states.get(trial.attempts[-1].job_id, "").split(" ")[0] not in (
                    "PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING", "COMPLETING"):
                trial.state = "pending"
    print(format_table(state, trials, directory, lambda t: objective_of(t, metric)), file=out)
    if holder is not None:
        print(f"a runner (pid {holder}) is working on this sweep", file=out)
    elif any(t.state == "pending" for t in trials):
        print(f"no runner is working on it; resume with `skill-neurons sweep {state.get('sweep_file')} "
              f"--dir {directory}` (run from {state.get('cwd')})", file=out)
    return 0


def slurm_options(rest: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--slurm.KEY VALUE`` / ``--slurm.KEY=VALUE`` -> ``{KEY: VALUE}``; anything else is argparse's error."""
    options, i = {}, 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--slurm."):
            parser.error(f"unrecognized arguments: {' '.join(rest[i:])}")
        key, has_value, value = arg[len("--slurm."):].partition("=")
        if not has_value:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                parser.error(f"{arg} needs a value ({arg} VALUE)")
            i, value = i + 1, rest[i + 1]
        options[key] = value
        i += 1
    return options


def main(argv: list[str] | None = None) -> int:
    """``skill-neurons sweep``: parse the options, run or show a sweep; errors become one message, exit 2."""
    parser = argparse.ArgumentParser(
        prog="skill-neurons sweep",
        description="Run a W&B sweep config with no W&B server (W&B's open-source sweep engine, W&B offline); "
                    "killed and started again with the same command, it resumes.")
    parser.add_argument("sweep_file", nargs="?", help="a W&B sweep YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--count", type=int, help="stop when the sweep has N trials (all runs of this DIR count; "
                        "required for random and bayes, default for grid: the whole grid)")
    parser.add_argument("--workers", "--parallel", type=int, default=1, dest="workers",
                        help="trials at once; one GPU each when there are GPUs (--executor slurm: the array's "
                             "slurm_array_parallelism)")
    parser.add_argument("--executor", default="processes", choices=cluster.EXECUTORS,
                        help="processes: child processes here (default); local: submitit's local jobs; slurm: "
                             "SLURM job arrays through submitit, with --slurm.partition P --slurm.gpus_per_task 1 "
                             "--slurm.time MINUTES (any sbatch option as submitit names it: --slurm.KEY VALUE)")
    parser.add_argument("--dir", help="sweep directory (default: runs/sweep-<file name>)")
    parser.add_argument("--retries", type=int, default=2,
                        help="how often a trial interrupted by the runner's death starts again (default 2)")
    parser.add_argument("--status", metavar="DIR", help="print the table of trials of the sweep in DIR and exit")
    parser.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--kill_delay", type=float, default=KILL_DELAY_S, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(old_spellings(sys.argv[1:] if argv is None else argv, RENAMED, parser.prog))
    slurm = slurm_options(rest, parser)
    try:
        if args.status:
            return print_status(Path(args.status))
        if not args.sweep_file:
            parser.error("give a sweep file (e.g. sweeps/quickstart.yaml) or --status DIR")
        runner = SweepRunner(args.sweep_file, args.dir, count=args.count, workers=args.workers,
                             retries=args.retries, poll=args.poll, kill_delay=args.kill_delay,
                             executor=args.executor, slurm=slurm)
        return runner.run()
    except SweepError as e:
        print(f"skill-neurons sweep: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

