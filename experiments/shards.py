"""`vaeaug-compare --shards=N|auto`: one single-core shard process per core, supervised.

On a CPU machine a sweep runs fastest as one single-threaded shard per core (measured in the
README's performance section): small models leave a 2-thread XLA step partly serial, and each
shard's validation, checkpoints and Python work then overlap the other shard's steps. `run_shards`
starts `compare --shard=i/N` children pinned to one core each (`os.sched_setaffinity`), prefixes
their progress lines with `[shard i/N]`, waits for all of them, and returns the failures; the
parent then writes one table over every finished cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading


def available_cores() -> list[int]:
  """The cores this process may run on (its affinity), else 0..cpu_count-1."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def parse_shards(text: str) -> int:
  """--shards: "auto" (one per available core) or a positive int; ValueError otherwise."""
  if text == "auto":
    return len(available_cores())
  if not text.isdigit() or int(text) < 1:
    raise ValueError(f'--shards must be a positive integer or "auto", got {text!r}')
  return int(text)


def child_command(argv: list[str], index: int, count: int) -> list[str]:
  """The compare command line of shard `index` (1-based) of `count`: the parent's flags, without
  --shards / --shard / --tables, plus this shard's."""
  own = ("--shards", "--shard", "--tables", "--notables")
  kept = [a for a in argv if not any(a == flag or a.startswith(flag + "=") for flag in own)]
  return [sys.executable, "-m", "experiments.compare", *kept, f"--shard={index}/{count}", "--shards=1", "--notables"]


def _relay(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(prefix + line)
    out.flush()


def run_shards(argv: list[str], count: int, *, out=None) -> list[str]:
  """Runs `count` shard children of the compare command `argv` (its flags, without the program
  name), shard i on core i (round-robin over the available cores), and waits for all of them.
  Returns one line per failed shard (empty when all succeeded)."""
  out = out or sys.stderr
  cores = available_cores()
  children = []
  for index in range(1, count + 1):
    core = cores[(index - 1) % len(cores)]
    process = subprocess.Popen(
      child_command(argv, index, count),
      stdout=subprocess.DEVNULL,  # the parent prints the one table
      stderr=subprocess.PIPE,
      text=True,
      preexec_fn=(lambda core=core: os.sched_setaffinity(0, {core})) if hasattr(os, "sched_setaffinity") else None,
    )
    relay = threading.Thread(target=_relay, args=(process.stderr, f"[shard {index}/{count}] ", out), daemon=True)
    relay.start()
    children.append((index, core, process, relay))
  failures = []
  try:
    for index, core, process, relay in children:
      code = process.wait()
      relay.join()
      if code != 0:
        failures.append(f"shard {index}/{count} (core {core}) exited with status {code}")
  except KeyboardInterrupt:
    for _, _, process, _ in children:
      process.terminate()
    raise
  return failures
