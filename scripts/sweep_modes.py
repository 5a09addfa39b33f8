r"""Cells per hour of a compare preset in each CPU mode (the `vaeaug-sweep-modes` command).

  python scripts/sweep_modes.py                           # default preset, 4 seeds, every mode
  python scripts/sweep_modes.py --modes=one_process,shards --num_seeds=2

The command lives in experiments/sweep_modes.py; --help lists its flags.
"""

from experiments import sweep_modes

if __name__ == "__main__":
  sweep_modes.run()
