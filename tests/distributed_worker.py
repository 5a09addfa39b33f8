"""One process of a data-parallel classifier training run, for tests/test_distributed.py.

  python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT.npz

With NUM_PROCESSES > 1 the processes join through `jax.distributed` (coordinator on 127.0.0.1:PORT,
gloo collectives on CPU) and share WORKDIR, as on a cluster with a shared filesystem; with 1 it is
the single-process reference (no jax.distributed). The global batch is the same either way. Each
process writes its final (best-on-validation) parameters and model state, in tree order, to OUT.
"""

import functools
import sys
from pathlib import Path

import numpy as np


def main(process_id: int, num_processes: int, port: int, workdir: str, out: str) -> None:
  import jax

  from vaeaug.training import sharding

  if num_processes > 1:
    sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
  assert jax.process_count() == num_processes and jax.process_index() == process_id

  sys.path.insert(0, str(Path(__file__).parent))
  from test_training import make_step, real_crops, tiny_config

  from classifiers import train
  from vaeaug.data import pipeline
  from vaeaug.training import loop

  config = tiny_config(epochs=2, checkpoint_every_steps=2)
  train_data, validation = real_crops(24, 16), real_crops(8, 16, "Validation")
  mesh = sharding.make_mesh()  # every device of every process
  assert mesh.devices.size == num_processes
  steps_per_epoch = pipeline.num_batches(len(train_data), config.batch_size, "drop")
  state = train.create_train_state_for(config, 2, steps_per_epoch)
  predict = jax.jit(functools.partial(train.eval_step, normalization=config.normalization))

  def evaluate(state):
    # The real evaluation path: every process holds the whole validation set and gets all outputs.
    probabilities = train.predict_probabilities(predict, state, validation, 16, mesh)
    return {"loss": train.weighted_log_loss(validation.labels, probabilities, np.ones(2))}

  loop_config = loop.LoopConfig(
    epochs=config.epochs,
    batch_size=config.batch_size,
    seed=config.seed,
    log_every_steps=config.log_every_steps,
    checkpoint_every_steps=config.checkpoint_every_steps,
    progress=False,
  )
  result = loop.fit(state, make_step(config), evaluate, train_data, loop_config, workdir, mesh=mesh)
  leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves((result.state.params, result.state.model_state))]
  np.savez(out, *leaves)
  print(f"process {process_id}/{num_processes}: {result.steps} steps, best epoch {result.best_epoch}", flush=True)


if __name__ == "__main__":
  process_id, num_processes, port, workdir, out = sys.argv[1:]
  main(int(process_id), int(num_processes), int(port), workdir, out)
