r"""Mean and 95 percent t interval of test metrics over training workdirs (e.g. several seeds).

  vaeaug-summarize /tmp/runs/cnn96_seed*  /tmp/runs/r18_seed*     # or: python scripts/summarize_runs.py

Runs are grouped by (dataset, model, n_per_class); the interval is Student's t over the runs of a
group (`experiments.stats.mean_ci`). A workdir without test_metrics.json (unfinished) is reported
on stderr and skipped.
"""

import collections
import json
import math
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments import stats
from vaeaug import cli

METRICS = ("balanced_accuracy", "accuracy", "f1", "specificity", "roc_auc")

_METRICS = flags.DEFINE_list("metrics", list(METRICS), "Test metrics shown (keys of test_metrics.json's test).")


def table(paths, metrics=METRICS, err=sys.stderr) -> str:
  """The Markdown table of the runs in `paths` (training workdirs)."""
  runs = collections.defaultdict(list)
  for path in paths:
    file = Path(path) / "test_metrics.json"
    if not file.is_file():
      print(f"skipped {path}: no test_metrics.json", file=err)
      continue
    summary = json.loads(file.read_text())
    runs[(summary["dataset"], summary["model"], summary.get("n_per_class"))].append(summary)
  lines = [
    "| dataset | model | n/class | seeds | " + " | ".join(metrics) + " | best epoch | s/run |",
    "|---" * (len(metrics) + 6) + "|",
  ]
  for (dataset, model, n_per_class), group in sorted(runs.items(), key=str):
    cells = []
    for metric in metrics:
      mean, ci = stats.mean_ci([run["test"].get(metric, math.nan) for run in group])
      cells.append(f"{mean:.3f}" + ("" if math.isnan(ci) else f" ± {ci:.3f}"))
    epochs = np.mean([run["best_epoch"] + 1 for run in group])
    seconds = np.mean([run["seconds"] for run in group])
    lines.append(
      f"| {dataset} | {model} | {n_per_class or 'all'} | {len(group)} | "
      + " | ".join(cells)
      + f" | {epochs:.1f} | {seconds:.0f} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more training workdirs")
  if not any((Path(path) / "test_metrics.json").is_file() for path in argv[1:]):
    sys.exit(f"error: none of the {len(argv) - 1} paths is a finished training workdir (with test_metrics.json)")
  print(table(argv[1:], _METRICS.value))


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
