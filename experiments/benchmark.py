r"""Train-step throughput of the project's JAX models against the same architectures in PyTorch.

  vaeaug-benchmark                              # every model, batch 64, 64 px (or: python scripts/benchmark.py)
  vaeaug-benchmark --models=cnn96,resnet18 --repeats=5 --json

For each model: the steady-state throughput (img/s: median over `--repeats` repetitions of
`--steps` steps, after warm-up) of the project's jit-compiled train step (`classifiers.train.
train_step` / `vaeaug.generators.train_step`, Adam, buffer donation) and of its PyTorch twin
(`experiments/torch_reference.py`, eager, same thread count, channels-last or contiguous - whichever
is faster in warm-up), JAX and PyTorch repetitions alternating in one run (PyTorch in a worker
process that waits while JAX runs), so both see the same machine load; the ratio JAX / PyTorch; compile time; achieved GFLOP/s (FLOPs from XLA's
cost analysis of the compiled step) and the share of the machine's fp32 peak (derivation printed);
process CPU seconds per step (robust to other jobs' load); PyTorch on one thread as a reference;
for models below 1.0x a `jax.profiler` breakdown of the JAX step; and, in a real
`vaeaug.training.loop.fit` run, the input pipeline's share of the step time. Writes
`<out_dir>/<date>_<cpu>.json` and `.md` (with `--notes` appended; both default to
experiments/results/benchmarks/ of the checkout the package is installed from). Without torch (the
`bench` extra) only the JAX side runs and the ratio is reported as unavailable.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags, logging

from experiments import configs
from experiments.machine import machine, measured_matmul_gflops, write_record
from vaeaug import cli

CLASSIFIERS = ("cnn96", "cnn_bn3", "cnn_lenet4", "resnet18", "resnet50")
# The ImageNet architectures (classifiers.mobilenet / vgg / inception), twinned by timm's models: asked
# for by name (--models=mobilenet_v2,...), not in the default run (VGG-19 alone takes minutes).
ARCHITECTURES = (
  "mobilenet_v2",
  "mobilenet_v3_small",
  "mobilenet_v3_large",
  "efficientnet_b0",
  "vgg19",
  "vgg19_bn",
  "inception_v3_small",  # the ImageNet stem needs >= 75 px; this one is the same network with a stride-1 stem
)
AUTOENCODERS = ("dae", "vae", "cvae", "rvae")
DEFAULT_MODELS = CLASSIFIERS + AUTOENCODERS
ALL_MODELS = CLASSIFIERS + ARCHITECTURES + AUTOENCODERS

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(DEFAULT_MODELS), f"models to benchmark: {', '.join(ALL_MODELS)}")
flags.DEFINE_integer("batch", 64, "global batch size")
flags.DEFINE_integer("image_size", 64, "image height = width")
flags.DEFINE_integer("repeats", 5, "timed repetitions per framework (the median is reported)")
flags.DEFINE_integer("steps", 3, "train steps per repetition")
flags.DEFINE_integer("warmup", 2, "untimed steps per framework before the repetitions")
flags.DEFINE_bool("json", False, "print the result as JSON instead of the Markdown table")
flags.DEFINE_string(
  "out_dir",
  None,
  "where to write the .json / .md ('' : nowhere; default: experiments/results/benchmarks of the checkout)",
)
flags.DEFINE_string("name", None, "file stem (default: <date>_<cpu>)")
flags.DEFINE_bool("torch", True, "also run the PyTorch twins (when torch is installed)")
flags.DEFINE_bool(
  "torch_one_thread",
  True,
  "also time PyTorch on 1 thread (a reference: OpenMP's spin-waits make 2 threads slower than 1 "
  "on a loaded machine); the ratio stays against the equal-thread run",
)
flags.DEFINE_list(
  "pipeline_models",
  ["cnn_bn3", "resnet18"],
  "models whose input-pipeline share is measured in a real loop.fit run ('' : none)",
)
flags.DEFINE_integer("pipeline_steps", 30, "train steps of the loop.fit run")
flags.DEFINE_list(
  "cells",
  ["none", "cvae"],
  "arms of the compare preset --cells_preset whose cells are run (2 seeds, a temporary workdir) to "
  "report cells per hour: a classifier cell and a generator cell ('' : none)",
)
flags.DEFINE_string("cells_preset", "default", "compare preset of the --cells run")
flags.DEFINE_enum(
  "profile",
  "auto",
  ["auto", "all", "none"],
  "per-op time breakdown (jax.profiler) of the JAX step: models below 1.0x (against the faster PyTorch run), all, none",
)
flags.DEFINE_enum(
  "compute_dtype",
  "float32",
  ["float32", "bfloat16"],
  "JAX compute dtype (config.compute_dtype); PyTorch always runs float32",
)
flags.DEFINE_string(
  "notes",
  None,
  "Markdown appended to the .md (analysis, what was tried; '' : none; default: notes.md of the default --out_dir)",
)


# ----------------------------------------------------------------------------- JAX side


def jax_setup(name: str, batch: int, image_size: int, compute_dtype: str = "float32"):
  """(train state, jitted project train step, host batch, key, config) with Adam at lr 1e-3."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(0)
  arrays = {
    "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
    "label": rng.integers(0, 2, (batch,)).astype(np.int32),
  }
  if name in AUTOENCODERS:
    from experiments.configs import generator as config_lib
    from vaeaug import generators

    # The residual VAE as the pool pretraining trains it (generator:pool), the others at the defaults.
    config = config_lib.get_config("pool" if name == "rvae" else "default")
    config.update(model=name, image_size=image_size, batch_size=batch, optimizer="adam", compute_dtype=compute_dtype)
    state = generators.create_generator_state(config, 2, steps_per_epoch=100)
    step = functools.partial(
      generators.train_step, beta=config.beta, warmup_steps=500, options=generators.loss_options(config)
    )
  else:
    from classifiers import train
    from experiments.configs import classifier as config_lib

    config = config_lib.get_config()
    config.update(model=name, image_size=image_size, batch_size=batch, optimizer="adam", compute_dtype=compute_dtype)
    state = train.create_train_state_for(config, 2, steps_per_epoch=100)
    step = functools.partial(
      train.train_step,
      num_classes=2,
      label_smoothing=0.0,
      weights=jnp.ones(2),
      normalization=config.normalization,
      augment_config=None,
    )
  from vaeaug.training.state import step_compiler_options

  # Compiled as the project's training compiles it (per-model-family XLA options).
  return (
    state,
    jax.jit(step, donate_argnums=0, compiler_options=step_compiler_options(config)),
    arrays,
    jax.random.key(0),
    config,
  )


def _timed(run_steps, steps: int) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) per step of `run_steps()`."""
  wall, cpu = time.perf_counter(), time.process_time()
  run_steps()
  return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


class JaxRunner:
  def __init__(self, name, batch, image_size, compute_dtype="float32"):
    import jax

    from vaeaug.training import sharding

    self.jax = jax
    state, step, arrays, self.key, self.config = jax_setup(name, batch, image_size, compute_dtype)
    self.mesh = sharding.make_mesh()
    self.state = sharding.replicate(state, self.mesh)
    self.batch = sharding.shard_batch(arrays, self.mesh)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch, self.key).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    self.param_sizes = sorted(int(x.size) for x in jax.tree.leaves(self.state.params))
    self.params = sum(self.param_sizes)

  def run(self, steps: int) -> tuple[float, float]:
    def run_steps():
      for _ in range(steps):
        self.state, metrics = self.compiled(self.state, self.batch, self.key)
      self.jax.block_until_ready((self.state, metrics))

    return _timed(run_steps, steps)


# ----------------------------------------------------------------------------- profile

_HLO_OP = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\(")
_HEAVY = (
  "convolution",
  "dot",
  "reduce-window",
  "select-and-scatter",
  "reduce",
  "transpose",
  "concatenate",
  "pad",
  "slice",
  "scatter",
  "gather",
)


def _hlo_ops(hlo: str) -> dict:
  """Top-level instruction name -> (category, shape, op_name metadata) of an optimized HLO module."""
  computations, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if header and not line.startswith(" "):
      current = computations.setdefault(header.group(1), [])
      continue
    op = _HLO_OP.match(line)
    if op and current is not None:
      current.append(op.group(3))
  ops = {}
  for line in hlo.splitlines():
    op = _HLO_OP.match(line)
    if not op:
      continue
    name, shape, opcode = op.groups()
    calls = re.search(r"calls=%([\w.\-]+)", line)
    inner = computations.get(calls.group(1), []) if calls else [opcode]
    kinds = [k for k in _HEAVY if k in inner]
    op_name = (re.search(r'op_name="([^"]+)"', line) or [None, ""])[1]
    backward = "transpose(jvp" in op_name
    if kinds and kinds[0] in ("convolution", "dot"):
      category = f"{'conv' if kinds[0] == 'convolution' else 'matmul'} {'backward' if backward else 'forward'}"
    elif kinds and kinds[0] in ("transpose",) or opcode in ("copy", "transpose"):
      category = "layout (transpose / copy)"
    elif kinds and kinds[0] in ("reduce",):
      category = "reductions (BatchNorm statistics, losses)"
    elif kinds:
      category = "pad / slice / concat / pool"
    else:
      category = "elementwise (BatchNorm, activations, Adam, ...)"
    ops[name] = (category, shape, op_name.split("/")[-1])
  return ops


def profile_step(runner, steps: int = 2, top: int = 8) -> dict:
  """Where the JAX step's time goes: the XLA CPU thunks of `steps` steps (jax.profiler, perfetto
  trace), grouped by kind (ms per step; sums of thunk times, which overlap on several threads)."""
  import gzip

  import jax

  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      runner.run(steps)
    traces = list(Path(logdir).rglob("*.trace.json.gz"))
    if not traces:
      return {}
    events = json.load(gzip.open(traces[0]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops = _hlo_ops(runner.compiled.as_text())
  per_op = {}
  for event in events:
    if event.get("ph") == "X" and event.get("name") in ops:
      per_op[event["name"]] = per_op.get(event["name"], 0.0) + event.get("dur", 0) / 1e3 / steps
  categories = {}
  for name, ms in per_op.items():
    categories[ops[name][0]] = categories.get(ops[name][0], 0.0) + ms
  total = sum(categories.values()) or float("nan")
  return {
    "total_ms": round(total, 1),
    "categories": {k: round(v, 1) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
    "top_ops": [
      {"op": name, "ms": round(ms, 1), "category": ops[name][0], "shape": ops[name][1], "source": ops[name][2]}
      for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    ],
  }


# ----------------------------------------------------------------------------- PyTorch side


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


class TorchRunner:
  """The PyTorch twin of the JAX `model`; picks the faster memory format."""

  def __init__(self, name, model, config, param_sizes, batch, image_size, threads, warmup):
    import numpy as np
    import torch

    from experiments import torch_reference

    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name in AUTOENCODERS:
      self.module = torch_reference.autoencoder(model)
      self.step_fn = functools.partial(torch_reference.autoencoder_step, beta=config.beta, sigma=config.noise.sigma)
    else:
      self.module = torch_reference.classifier(model)
      self.step_fn = torch_reference.classifier_step
    self.params = torch_reference.count_params(self.module)
    sizes = sorted(p.numel() for p in self.module.parameters())
    if sizes != param_sizes:
      raise AssertionError(
        f"{name}: the PyTorch twin's parameters ({self.params}, {len(sizes)} tensors) differ "
        f"from the JAX model's ({sum(param_sizes)}, {len(param_sizes)} tensors)"
      )
    rng = np.random.default_rng(0)
    nhwc = torch.from_numpy(rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8))
    self.labels = torch.from_numpy(rng.integers(0, 2, (batch,)))
    self.images = {
      "channels_last": nhwc.permute(0, 3, 1, 2),  # an NHWC buffer is channels-last NCHW
      "contiguous": nhwc.permute(0, 3, 1, 2).contiguous(),
    }
    self.format_img_per_s = {}
    best = None
    for fmt in ("contiguous", "channels_last"):
      self._use(fmt)
      for _ in range(warmup):
        self._step()
      dt = min(self.run(1)[0] for _ in range(2))
      self.format_img_per_s[fmt] = round(batch / dt, 1)
      if best is None or dt < best[1]:
        best = (fmt, dt)
    self.format = best[0]
    self._use(self.format)

  def _use(self, fmt):
    torch = self.torch
    self.module.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
    self.x = self.images[fmt]
    self.optimizer = torch.optim.Adam(self.module.parameters(), lr=1e-3)

  def _step(self):
    return self.step_fn(self.module, self.optimizer, self.x, self.labels)

  def run(self, steps: int) -> tuple[float, float]:
    def run_steps():
      for _ in range(steps):
        loss = self._step()
      float(loss)

    return _timed(run_steps, steps)


def _torch_worker(conn, name, batch, image_size, threads, warmup, compute_dtype):
  """Serves `(steps, threads) -> (wall s, CPU s) per step` of the PyTorch twin over `conn`."""
  try:
    state, _, _, _, config = jax_setup(name, batch, image_size, compute_dtype)  # the architecture to copy
    sizes = sorted(int(x.size) for x in __import__("jax").tree.leaves(state.params))
    twin = TorchRunner(name, state.model(), config, sizes, batch, image_size, threads, warmup)
    conn.send({"params": twin.params, "format": twin.format, "format_img_per_s": twin.format_img_per_s})
    while (request := conn.recv()) is not None:
      steps, n_threads = request
      twin.torch.set_num_threads(n_threads)
      conn.send(twin.run(steps))
  except Exception as error:  # reported by the parent with the worker's traceback
    import traceback

    conn.send({"error": f"{type(error).__name__}: {error}\n{traceback.format_exc()}"})


class TorchProcess:
  """The PyTorch twin in its own process. In one process, PyTorch's OpenMP threads (and XLA's
  pool) keep spinning on the two cores after their own steps and slowed the other framework's
  next repetition (ResNet-18 JAX: 102 img/s next to PyTorch in-process vs 150 alone). The worker
  is idle, blocked on its pipe, while JAX runs."""

  def __init__(self, name, batch, image_size, threads, warmup, compute_dtype):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    self.conn, child = context.Pipe()
    self.process = context.Process(
      target=_torch_worker, daemon=True, args=(child, name, batch, image_size, threads, warmup, compute_dtype)
    )
    self.process.start()
    info = self._receive()
    self.params, self.format, self.format_img_per_s = info["params"], info["format"], info["format_img_per_s"]

  def _receive(self):
    if not self.conn.poll(1800):
      raise TimeoutError("the PyTorch worker did not answer in 30 minutes")
    reply = self.conn.recv()
    if isinstance(reply, dict) and "error" in reply:
      raise RuntimeError(f"PyTorch worker failed: {reply['error']}")
    return reply

  def run(self, steps: int, threads: int) -> tuple[float, float]:
    self.conn.send((steps, threads))
    return self._receive()

  def close(self):
    self.conn.send(None)
    self.process.join(timeout=60)


# ----------------------------------------------------------------------------- input pipeline


def pipeline_share(name: str, batch: int, image_size: int, steps: int) -> dict:
  """Time in the input pipeline (`pipeline.epoch_batches` + `sharding.shard_batch`) per step of a
  real `loop.fit` run, against the loop's own img/s (median over its log intervals after the
  first, which holds the compile)."""
  import jax
  import numpy as np

  from vaeaug.data import pipeline
  from vaeaug.training import loop, sharding

  state, step, _, _, _ = jax_setup(name, batch, image_size)
  rng = np.random.default_rng(1)
  n = batch * steps
  data = pipeline.ArrayDataset(
    images=rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
    labels=rng.integers(0, 2, (n,)).astype(np.int32),
    files=np.array([f"random/{i}" for i in range(n)]),
    groups=np.array([str(i) for i in range(n)]),
    class_names=("a", "b"),
  )
  spent = {"epoch_batches": 0.0, "shard_batch": 0.0, "batches": 0}
  original_batches, original_shard = pipeline.epoch_batches, sharding.shard_batch

  def timed_batches(*args, **kwargs):
    iterator = original_batches(*args, **kwargs)
    while True:
      start = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        return
      finally:
        spent["epoch_batches"] += time.perf_counter() - start
      spent["batches"] += 1
      yield item

  def timed_shard(*args, **kwargs):
    start = time.perf_counter()
    try:
      return original_shard(*args, **kwargs)
    finally:
      spent["shard_batch"] += time.perf_counter() - start

  log_every = max(1, steps // 6)
  config = loop.LoopConfig(epochs=1, batch_size=batch, log_every_steps=log_every, progress=False)
  pipeline.epoch_batches, sharding.shard_batch = timed_batches, timed_shard
  try:
    with tempfile.TemporaryDirectory() as workdir:
      loop.fit(state, step, lambda state: {"loss": 0.0}, data, config, workdir)
      rates = [
        json.loads(line)["img_per_s"]
        for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
      ]
  finally:
    pipeline.epoch_batches, sharding.shard_batch = original_batches, original_shard
  jax.clear_caches()
  steady = float(np.median(rates[1:])) if len(rates) > 1 else float("nan")
  data_s = (spent["epoch_batches"] + spent["shard_batch"]) / max(spent["batches"], 1)
  step_s = batch / steady
  return {
    "model": name,
    "loop_img_per_s": round(steady, 1),
    "loop_step_ms": round(1e3 * step_s, 2),
    "epoch_batches_ms": round(1e3 * spent["epoch_batches"] / max(spent["batches"], 1), 3),
    "shard_batch_ms": round(1e3 * spent["shard_batch"] / max(spent["batches"], 1), 3),
    "data_share": round(data_s / step_s, 4),
  }


def cell_rates(arms: list[str], preset: str, seeds: int = 2) -> list[dict]:
  """Cells per hour of the compare preset's cells of each arm: `seeds` seeds of a one-arm-list
  sweep in a temporary workdir. The first seed's cells load the data and compile (or fetch from the
  compilation cache); the rate is from the last seed's, as in a long sweep."""
  from experiments import sweep as sweep_lib
  from experiments import validation
  from experiments.configs import compare as compare_config

  config = compare_config.get_config(preset)
  config.arms = tuple(arms)
  config.num_seeds = seeds
  validation.validate_compare_config(config)
  sweep_lib.use_compilation_cache(config)
  with tempfile.TemporaryDirectory() as workdir:
    records = sweep_lib.Sweep(config, workdir, stream=sys.stderr).run()
  rows = []
  for arm in arms:
    cells = sorted((r for r in records.values() if r["arm"] == arm), key=lambda r: r["seed"])
    last = cells[-1]["timing"]
    rows.append(
      {
        "arm": arm,
        "preset": preset,
        "cells": len(cells),
        "first_cell_s": cells[0]["timing"]["cell_seconds"],
        "cell_s": last["cell_seconds"],
        "cells_per_hour": round(3600 / last["cell_seconds"], 1),
        "steps_s": round(last.get("classifier_steps_seconds", 0.0) + last.get("generator_step_seconds", 0.0), 2),
        "overhead_share": last.get("overhead_share"),
        "epochs_run": cells[-1]["epochs_run"],
      }
    )
  return rows


# ----------------------------------------------------------------------------- report


def _fmt(value, spec=".1f", missing="n/a"):
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return missing
  return format(value, spec)


def markdown(result: dict) -> str:
  m = result["machine"]
  dtype = result.get("compute_dtype", "float32")
  lines = [
    f"# Train-step benchmark, {result['date']}",
    "",
    f"Command: `{result['command']}`",
    "",
    f"Machine: {m['cpu']} ({m['vendor']} family {m['family']} model {m['model']}), {m['cores']} cores usable, "
    f"{m['isa']}, avx512_bf16 {'yes' if m['bf16'] else 'no'}, AMX {'yes' if m['amx'] else 'no'}, "
    f"{m['memory_gb']} GiB{', virtual machine' if m['hypervisor'] else ''}. {result['software']}. "
    f"Load average (1 min) {result['load_average_start'][0]} at the start, {result['load_average_end'][0]} "
    "at the end (other jobs share this machine).",
    "",
    f"fp32 peak: {m['peak_derivation']}. One {result['matmul_size']}^2 fp32 XLA matmul: "
    f"{result['matmul_gflops']:.0f} GFLOP/s (best of 5, wall clock).",
    "",
    f"Batch {result['batch']}, {result['image_size']}x{result['image_size']}x3 uint8 input, Adam, "
    f"{result['threads']} threads for both frameworks, JAX compute dtype {dtype} (PyTorch float32); "
    f"median of {result['repeats']} repetitions of {result['steps']} steps, JAX and PyTorch repetitions "
    "alternating, PyTorch in its own worker process (PyTorch on 1 thread too, as a reference). Ratio = JAX img/s / PyTorch img/s at equal threads; "
    "ratio vs faster PyTorch: against the better of PyTorch's equal-thread and 1-thread runs. "
    "GFLOP/s and % peak: XLA's FLOP count of the compiled "
    "JAX step / its median step time. CPU s/step: each framework's process CPU time per step (all "
    "threads; spin-waits count).",
    "",
    "| model | params | JAX img/s | PyTorch img/s (format) | ratio | GFLOP/step | JAX GFLOP/s | % peak | "
    "compile s | CPU s/step JAX / PyTorch | PyTorch 1-thread img/s | ratio vs faster PyTorch |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in result["models"]:
    torch_cell = (
      f"{_fmt(r['torch_img_per_s'])} ({r['torch_format']})"
      if r.get("torch_img_per_s")
      else result.get("torch_missing", "n/a")
    )
    cpu = f"{_fmt(r['jax_cpu_s_per_step'], '.3f')} / {_fmt(r.get('torch_cpu_s_per_step'), '.3f')}"
    lines.append(
      f"| {r['model']} | {r['params']:,} | {_fmt(r['jax_img_per_s'])} | {torch_cell} | "
      f"{_fmt(r.get('ratio'), '.2f')} | {_fmt(r['gflop_per_step'], '.2f')} | {_fmt(r['jax_gflops'])} | "
      f"{_fmt(r['peak_percent'])} | {_fmt(r['compile_s'])} | {cpu} | "
      f"{_fmt(r.get('torch_1thread_img_per_s'))} | {_fmt(r.get('ratio_vs_faster_torch'), '.2f')} |"
    )
  if result["pipeline"]:
    lines += [
      "",
      "Input pipeline in a real `loop.fit` run (time in `pipeline.epoch_batches` + "
      "`sharding.shard_batch` per step, against the loop's own step time):",
      "",
      "| model | loop img/s | step ms | epoch_batches ms | shard_batch ms | data share |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    for p in result["pipeline"]:
      lines.append(
        f"| {p['model']} | {_fmt(p['loop_img_per_s'])} | {_fmt(p['loop_step_ms'])} | "
        f"{_fmt(p['epoch_batches_ms'], '.2f')} | {_fmt(p['shard_batch_ms'], '.2f')} | "
        f"{_fmt(100 * p['data_share'], '.1f')}% |"
      )
  if result.get("cells"):
    lines += [
      "",
      f"Study cells (`compare:{result['cells'][0]['preset']}`, the last of {result['cells'][0]['cells']} "
      "seeds, warm compilation cache): wall seconds per cell, of which train steps, and overhead "
      "(validation, checkpoints, data, compile, setup) as a share of the cell:",
      "",
      "| arm | cells/hour | cell s | first cell s | train steps s | overhead | epochs |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cells"]:
      lines.append(
        f"| {c['arm']} | {_fmt(c['cells_per_hour'])} | {_fmt(c['cell_s'])} | {_fmt(c['first_cell_s'])} | "
        f"{_fmt(c['steps_s'])} | {_fmt(100 * c['overhead_share'] if c['overhead_share'] is not None else None, '.0f')}% "
        f"| {c['epochs_run']} |"
      )
  profiled = [r for r in result["models"] if r.get("profile")]
  if profiled:
    lines += [
      "",
      "## Where the JAX step's time goes",
      "",
      "XLA CPU thunk times from `jax.profiler` (ms per step, summed over threads, so they can exceed "
      "the step's wall time), by kind, and the largest single ops:",
      "",
    ]
    for r in profiled:
      prof = r["profile"]
      lines.append(
        f"**{r['model']}** (ratio {_fmt(r.get('ratio'), '.2f')}, vs faster PyTorch "
        f"{_fmt(r.get('ratio_vs_faster_torch'), '.2f')}; {prof['total_ms']} ms of thunks "
        f"per step): "
        + ", ".join(f"{k} {v} ms ({100 * v / prof['total_ms']:.0f}%)" for k, v in prof["categories"].items())
        + "."
      )
      lines.append("")
      lines.append("| op | ms | kind | output shape | source |")
      lines.append("|---|---:|---|---|---|")
      for op in prof["top_ops"]:
        lines.append(f"| {op['op']} | {op['ms']} | {op['category']} | `{op['shape']}` | {op['source']} |")
      lines.append("")
  return "\n".join(lines) + "\n"


def output_paths() -> tuple[str, str]:
  """--out_dir and --notes, whose defaults are the checkout's experiments/results/benchmarks/ (not
  the working directory's)."""
  out_dir, notes = FLAGS.out_dir, FLAGS.notes
  if out_dir is None or notes is None:
    try:
      default = configs.results_dir("benchmarks")
    except FileNotFoundError as error:
      if out_dir is None:
        sys.exit(f"error: {error}; pass --out_dir=DIR (or --out_dir= to write nothing)")
      default = None
    out_dir = str(default) if out_dir is None else out_dir
    notes = (str(default / "notes.md") if default else "") if notes is None else notes
  return out_dir, notes


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax / profiler INFO lines would bury the table
  unknown = sorted(set(FLAGS.models) - set(ALL_MODELS))
  if unknown:
    raise app.UsageError(f"unknown models {unknown}; choose from {ALL_MODELS}")
  out_dir, notes = output_paths()
  import jax
  import numpy as np

  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  use_torch = FLAGS.torch and torch_available()
  info = machine()
  software = f"jax {jax.__version__}, Python {platform.python_version()}"
  if use_torch:
    import torch

    software += f", torch {torch.__version__}"
  result = {
    "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    "command": " ".join(["vaeaug-benchmark", *(shlex.quote(a) for a in sys.argv[1:])]),
    "machine": info,
    "software": software,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "batch": FLAGS.batch,
    "image_size": FLAGS.image_size,
    "repeats": FLAGS.repeats,
    "steps": FLAGS.steps,
    "compute_dtype": FLAGS.compute_dtype,
    "threads": threads,
    "load_average_start": [round(x, 2) for x in os.getloadavg()],
    "matmul_size": 2048,
    "matmul_gflops": round(measured_matmul_gflops(), 1),
    "models": [],
    "pipeline": [],
  }
  if not use_torch:
    result["torch_missing"] = "n/a (torch not installed)" if FLAGS.torch else "n/a (--notorch)"
    print(f"PyTorch side skipped: {result['torch_missing']}; the ratio is unavailable.", file=sys.stderr)

  for name in FLAGS.models:
    print(f"{name}: compiling", file=sys.stderr, flush=True)
    runner = JaxRunner(name, FLAGS.batch, FLAGS.image_size, FLAGS.compute_dtype)
    for _ in range(FLAGS.warmup):
      runner.run(1)
    twin = (
      TorchProcess(name, FLAGS.batch, FLAGS.image_size, threads, FLAGS.warmup, FLAGS.compute_dtype)
      if use_torch
      else None
    )
    if twin is not None and twin.params != runner.params:
      raise AssertionError(f"{name}: PyTorch twin has {twin.params} parameters, the JAX model {runner.params}")
    jax_times, torch_times, torch1_times = [], [], []
    one_thread = twin is not None and FLAGS.torch_one_thread and threads > 1
    for _ in range(FLAGS.repeats):  # alternate, so both sides see the same machine load
      jax_times.append(runner.run(FLAGS.steps))
      if twin is not None:
        torch_times.append(twin.run(FLAGS.steps, threads))
      if one_thread:
        torch1_times.append(twin.run(FLAGS.steps, 1))
    jax_s = float(np.median([t for t, _ in jax_times]))
    gflops = runner.flops / jax_s / 1e9
    row = {
      "model": name,
      "params": runner.params,
      "compile_s": round(runner.compile_s, 2),
      "jax_img_per_s": round(FLAGS.batch / jax_s, 1),
      "jax_step_ms": round(1e3 * jax_s, 2),
      "jax_step_ms_all": [round(1e3 * t, 2) for t, _ in jax_times],
      "jax_cpu_s_per_step": round(float(np.median([c for _, c in jax_times])), 4),
      "gflop_per_step": round(runner.flops / 1e9, 3),
      "jax_gflops": round(gflops, 1),
      "peak_percent": round(100 * gflops / info["peak_gflops"], 1),
    }
    if twin is not None:
      torch_s = float(np.median([t for t, _ in torch_times]))
      row.update(
        torch_img_per_s=round(FLAGS.batch / torch_s, 1),
        torch_step_ms=round(1e3 * torch_s, 2),
        torch_step_ms_all=[round(1e3 * t, 2) for t, _ in torch_times],
        torch_cpu_s_per_step=round(float(np.median([c for _, c in torch_times])), 4),
        torch_format=twin.format,
        torch_format_img_per_s=twin.format_img_per_s,
        torch_gflops=round(runner.flops / torch_s / 1e9, 1),
        ratio=round(torch_s / jax_s, 3),
        ratio_per_repeat=[round(t / j, 3) for (j, _), (t, _) in zip(jax_times, torch_times)],
      )
      if torch1_times:
        torch1_s = float(np.median([t for t, _ in torch1_times]))
        row.update(
          torch_1thread_img_per_s=round(FLAGS.batch / torch1_s, 1),
          torch_1thread_step_ms_all=[round(1e3 * t, 2) for t, _ in torch1_times],
          ratio_vs_faster_torch=round(min(torch_s, torch1_s) / jax_s, 3),
        )
    if FLAGS.profile == "all" or (
      FLAGS.profile == "auto" and row.get("ratio_vs_faster_torch", row.get("ratio", 0.0)) < 1.0
    ):
      row["profile"] = profile_step(runner)
    result["models"].append(row)
    print(
      f"{name}: JAX {row['jax_img_per_s']} img/s, PyTorch {row.get('torch_img_per_s', 'n/a')} img/s, "
      f"ratio {row.get('ratio', 'n/a')}",
      file=sys.stderr,
      flush=True,
    )
    if twin is not None:
      twin.close()
    del runner, twin
    jax.clear_caches()

  for name in [m for m in FLAGS.pipeline_models if m]:
    print(f"{name}: input pipeline in loop.fit", file=sys.stderr, flush=True)
    result["pipeline"].append(pipeline_share(name, FLAGS.batch, FLAGS.image_size, FLAGS.pipeline_steps))

  cells = [arm for arm in FLAGS.cells if arm]
  if cells:
    print(f"cells of compare:{FLAGS.cells_preset}: {', '.join(cells)}", file=sys.stderr, flush=True)
    result["cells"] = cell_rates(cells, FLAGS.cells_preset)

  result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
  table = markdown(result)
  if notes and Path(notes).is_file():
    table += "\n" + Path(notes).read_text()
  # --json: the document is stdout's last line, whole, so `tail -n 1 | jq` works after any output.
  print(json.dumps(result) if FLAGS.json else table)
  if out_dir:
    write_record(out_dir, FLAGS.name, "", info, result, table)


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
