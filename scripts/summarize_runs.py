r"""Mean and 95 percent t interval of test metrics over training workdirs (the `vaeaug-summarize` command).

  python scripts/summarize_runs.py /tmp/runs/cnn96_seed*  /tmp/runs/r18_seed*

The command lives in experiments/summarize.py; --help lists its flags.
"""

from experiments import summarize

if __name__ == "__main__":
  summarize.run()
