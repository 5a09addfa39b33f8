r"""Train-step throughput of the project's JAX models against PyTorch twins (the `vaeaug-benchmark` command).

  python scripts/benchmark.py                                   # every model, batch 64, 64 px
  python scripts/benchmark.py --models=cnn96,resnet18 --repeats=5 --json

The command lives in experiments/benchmark.py; --help lists its flags.
"""

from experiments import benchmark

if __name__ == "__main__":
  benchmark.run()
