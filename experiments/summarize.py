r"""Mean and 95% confidence interval of test metrics over training workdirs (e.g. several seeds).

  python scripts/summarize_runs.py /tmp/runs/cnn96_seed*  /tmp/runs/r18_seed*

Runs are grouped by (dataset, model, n_per_class); the interval is Student's t over seeds.
"""

import collections
import json
import math
import sys
from pathlib import Path

import numpy as np

METRICS = ("balanced_accuracy", "accuracy", "f1", "specificity", "roc_auc")
# Two-sided 97.5% Student t quantiles for 1..30 degrees of freedom (no scipy needed).
_T975 = [
  12.706,
  4.303,
  3.182,
  2.776,
  2.571,
  2.447,
  2.365,
  2.306,
  2.262,
  2.228,
  2.201,
  2.179,
  2.160,
  2.145,
  2.131,
  2.120,
  2.110,
  2.101,
  2.093,
  2.086,
  2.080,
  2.074,
  2.069,
  2.064,
  2.060,
  2.056,
  2.052,
  2.048,
  2.045,
  2.042,
]


def mean_ci(values):
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), float("nan")
  t = _T975[min(len(values) - 1, len(_T975)) - 1]
  return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def main(paths):
  runs = collections.defaultdict(list)
  for path in paths:
    file = Path(path) / "test_metrics.json"
    if not file.is_file():
      print(f"skipped {path}: no test_metrics.json", file=sys.stderr)
      continue
    summary = json.loads(file.read_text())
    runs[(summary["dataset"], summary["model"], summary.get("n_per_class"))].append(summary)
  print("| dataset | model | n/class | seeds | " + " | ".join(METRICS) + " | best epoch | s/run |")
  print("|---" * (len(METRICS) + 6) + "|")
  for (dataset, model, n_per_class), group in sorted(runs.items(), key=str):
    cells = []
    for metric in METRICS:
      mean, ci = mean_ci([run["test"][metric] for run in group])
      cells.append(f"{mean:.3f}" + ("" if math.isnan(ci) else f" ± {ci:.3f}"))
    epochs = np.mean([run["best_epoch"] + 1 for run in group])
    seconds = np.mean([run["seconds"] for run in group])
    print(
      f"| {dataset} | {model} | {n_per_class or 'all'} | {len(group)} | "
      + " | ".join(cells)
      + f" | {epochs:.1f} | {seconds:.0f} |"
    )


if __name__ == "__main__":
  main(sys.argv[1:])
