"""Defaults shared by every entry point; other configs start from `get_config()` here."""

import ml_collections

from vaeaug.data import sources


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Built TFDS datasets (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.dataset = "face_mask_detection/2classes"
  # The dataset build whose splits are read (vaeaug.data.sources.DATA_VERSION: what this code builds;
  # "1.0.0" reads the builds before the aligned near-duplicate signal, for recorded results).
  config.dataset_version = sources.DATA_VERSION
  config.image_size = 64
  # Training images per class, stratified and nested across n for one seed; None: all (0 is no size: an error).
  config.n_per_class = ml_collections.config_dict.placeholder(int)
  config.data_seed = ml_collections.config_dict.placeholder(int)  # draws the n_per_class subset; None: seed
  config.normalization = "unit"  # unit [0, 1], symmetric [-1, 1], imagenet

  config.batch_size = 64
  config.eval_batch_size = 256
  config.epochs = 30
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.schedule = "constant"  # constant, cosine (with warm-up), onecycle
  config.warmup_epochs = 0.0
  config.weight_decay = 0.0
  config.momentum = 0.9
  config.nesterov = False
  config.grad_clip_norm = ml_collections.config_dict.placeholder(float)
  # Activation / matmul dtype: float32, or bfloat16 (mixed precision for GPU/TPU; parameters,
  # optimizer state, BatchNorm statistics, logits and losses stay float32).
  config.compute_dtype = "float32"
  # XLA:CPU's YNNPACK fusions for the train / eval steps (training.state.step_compiler_options).
  config.xla_cpu_ynn_fusions = True

  config.log_every_steps = 10
  config.checkpoint_every_steps = 0  # besides epoch ends; multiple of log_every_steps
  config.checkpoint_every_epochs = 1  # epoch-end saves every N epochs (the last always); resume replays the rest
  config.checkpoint_min_seconds = 0.0  # ... and at least this long after the previous save
  config.keep_checkpoints = 2
  config.progress = True
  config.num_devices = ml_collections.config_dict.placeholder(int)  # None: all local devices
  config.distributed = False  # jax.distributed.initialize() for multi-host jobs
  return config
