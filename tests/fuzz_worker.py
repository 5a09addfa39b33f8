"""Runs one dataset build or one prediction on hostile inputs for tests/test_fuzz.py, in its own
process: with an address-space limit (bounded memory), with every file the process opens or lists
recorded (an audit hook), and its results written as JSON.

  python tests/fuzz_worker.py SPEC.json RESULT.json

SPEC: {"action": "build", "dataset", "config", "raw_root", "data_dir", "memory_limit_bytes"} or
{"action": "predict", "checkpoint", "inputs": [paths], "memory_limit_bytes"}. RESULT: {"opened":
[paths], "listed": [paths], "maxrss_bytes", "report" (build) | "results", "status", "stdout",
"stderr" (predict)}.
"""

import contextlib
import io
import json
import os
import resource
import sys


def main(spec_path: str, result_path: str) -> None:
  spec = json.loads(open(spec_path).read())
  limit = int(spec["memory_limit_bytes"])
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  opened, listed = set(), set()

  def audit(event, args):
    # Paths only (an int is an already-open descriptor); reads from C++ (TFDS writing its own
    # output) do not show up here, every Python-level open of an input does.
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
      opened.add(os.path.abspath(os.fsdecode(args[0])))
    elif event in ("os.listdir", "os.scandir") and isinstance(args[0], (str, bytes, os.PathLike)):
      listed.add(os.path.abspath(os.fsdecode(args[0])))

  sys.addaudithook(audit)
  result = {}
  if spec["action"] == "build":
    from vaeaug.data import building

    # Every skipped file in the report's examples (normally a few per problem), so the test can
    # account for each hostile file.
    building.SkipLog.__init__.__defaults__ = (10**6,)
    report = building.prepare(spec["dataset"], spec["config"], data_dir=spec["data_dir"], raw_root=spec["raw_root"])
    result["report"] = {
      "total": report.total,
      "counts": report.counts,
      "skips": report.skips,
      "summary": report.summary(),
    }
  elif spec["action"] == "predict":
    from absl import flags

    from classifiers import predict

    flag_values = predict.define_flags(flags.FlagValues())
    extra = flag_values(["predict", f"--checkpoint={spec['checkpoint']}", "--json", *spec["inputs"]])[1:]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      status = predict.run(flag_values, extra)
    result.update(status=status, results=json.loads(out.getvalue()), stderr=err.getvalue())
  else:
    raise ValueError(f"unknown action {spec['action']!r}")
  result["opened"] = sorted(opened)
  result["listed"] = sorted(listed)
  result["maxrss_bytes"] = _peak_rss_bytes()
  with open(result_path, "w") as f:
    json.dump(result, f)


def _peak_rss_bytes() -> int:
  """Peak resident memory of this process since exec. Not getrusage's ru_maxrss: Linux carries that
  over fork + exec, so a worker started by a large pytest process would report its parent's peak."""
  for line in open("/proc/self/status").read().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024  # kB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: an upper bound


if __name__ == "__main__":
  main(*sys.argv[1:])
