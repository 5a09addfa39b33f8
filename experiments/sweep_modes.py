r"""Cells per hour of a compare preset on this CPU machine, in each way of running it (the
`vaeaug-sweep-modes` command).

  python scripts/sweep_modes.py                        # default preset, 4 seeds, every mode
  vaeaug-sweep-modes --modes=one_process,shards --num_seeds=2

Modes, run back to back, each in a fresh workdir with a warm compilation cache:
* one_process - `vaeaug-compare`: one process, XLA's threads on every core;
* shards      - `vaeaug-compare --shards=auto`: one single-core shard process per core;
* devices     - one process with one XLA CPU device per core
  (`XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`), each batch split over them.

Before the timed runs, each compiled program family is built once (a one-seed run of the arms, untimed),
so every mode starts with the same warm cache. Prints a Markdown table and writes it with the JSON
record to --out_dir (default experiments/results/benchmarks of the checkout).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from experiments import configs, shards
from experiments.machine import machine, write_record
from vaeaug import cli

MODES = ("one_process", "shards", "devices")
FLAGS = flags.FLAGS
flags.DEFINE_list("modes", list(MODES), f"modes to time: {', '.join(MODES)}")
flags.DEFINE_string("preset", "default", "compare preset")
flags.DEFINE_integer("num_seeds", 4, "seeds of the timed grid (a multiple of the core count balances the shards)")
flags.DEFINE_string(
  "out_dir",
  None,
  "where to write the .json / .md ('' : nowhere; default: experiments/results/benchmarks of the checkout)",
)
flags.DEFINE_string("name", None, "file stem (default: sweep_modes_<date>_<cpu>)")


def _command(mode: str, cores: int, workdir: Path, num_seeds: int, preset: str) -> tuple[list[str], dict]:
  command = [
    sys.executable,
    "-m",
    "experiments.compare",
    f"--config=compare:{preset}",
    f"--config.num_seeds={num_seeds}",
    f"--workdir={workdir}",
  ]
  env = dict(os.environ)
  if mode == "shards":
    command.append(f"--shards={cores}")
  elif mode == "devices":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={cores}").strip()
  return command, env


def _run(mode: str, cores: int, workdir: Path, num_seeds: int, preset: str) -> float:
  command, env = _command(mode, cores, workdir, num_seeds, preset)
  start = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f"{mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
  return seconds


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.modes) - set(MODES))
  if unknown:
    raise app.UsageError(f"unknown modes {unknown}; choose from {MODES}")
  cores = len(shards.available_cores())
  info = machine()
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    scratch = Path(scratch)
    for mode in FLAGS.modes:  # warm the compilation cache for each mode's programs (untimed)
      if mode != "shards":  # a single-core shard compiles the same programs as one process
        print(f"warming the compilation cache: {mode}", file=sys.stderr, flush=True)
        _run(mode, cores, scratch / f"warm_{mode}", 1, FLAGS.preset)
    for mode in FLAGS.modes:
      print(f"timing: {mode}", file=sys.stderr, flush=True)
      workdir = scratch / mode
      seconds = _run(mode, cores, workdir, FLAGS.num_seeds, FLAGS.preset)
      cells = len((workdir / "cells.jsonl").read_text().splitlines())
      summary = json.loads((workdir / "summary.json").read_text())["compute_seconds"]
      rows.append(
        {
          "mode": mode,
          "wall_s": round(seconds, 1),
          "cells": cells,
          "cells_per_hour": round(3600 * cells / seconds, 1),
          "overhead_share": summary.get("overhead_share"),
        }
      )
      print(f"{mode}: {cells} cells in {seconds:.0f} s", file=sys.stderr, flush=True)
  fastest = max(rows, key=lambda r: r["cells_per_hour"])
  result = {
    "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    "command": " ".join(["vaeaug-sweep-modes", *sys.argv[1:]]),
    "machine": info,
    "preset": FLAGS.preset,
    "num_seeds": FLAGS.num_seeds,
    "cores": cores,
    "modes": rows,
    "fastest": fastest["mode"],
  }
  lines = [
    f"Sweep modes: `compare:{FLAGS.preset}` with {FLAGS.num_seeds} seeds on {info['cpu']} ({cores} cores), "
    f"{result['date']}, warm compilation cache. Command: `{result['command']}`.",
    "",
    "| mode | wall s | cells | cells/hour | overhead share of cell time |",
    "|---|---:|---:|---:|---:|",
  ]
  for r in rows:
    share = "n/a" if r["overhead_share"] is None else f"{100 * r['overhead_share']:.0f}%"
    lines.append(f"| {r['mode']} | {r['wall_s']:.0f} | {r['cells']} | {r['cells_per_hour']:.0f} | {share} |")
  table = "\n".join(lines) + "\n"
  print(table)
  out_dir = FLAGS.out_dir if FLAGS.out_dir is not None else str(configs.results_dir("benchmarks"))
  if out_dir:
    write_record(out_dir, FLAGS.name, "sweep_modes_", info, result, table)


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
