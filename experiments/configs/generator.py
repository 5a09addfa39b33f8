r"""Generator training (any kind of vaeaug.kinds) on a dataset's real training split, selected on validation.

  vaeaug-train-generator --workdir=/tmp/cvae --config=generator
  vaeaug-train-generator --workdir=/tmp/dae --config=generator \
      --config.model=dae --config.noise.kind=masking --config.n_per_class=50 --config.seed=2
  vaeaug-train-generator --workdir=runs/pool_rvae --config=generator:pool          # the unlabeled face pool
  vaeaug-train-generator --workdir=runs/det_rcvae --config=generator:converged --config.model=rcvae

Presets: "default" (below); "pool": a residual VAE (rvae) at 64 px with a Gaussian likelihood pretrained on
the unlabeled face pool until early stopping; "converged": the same recipe on a labelled dataset
(--config.dataset, --config.model). The README's generator table and
experiments/results/generators/quality.json come from these two presets.

Trained on the training split only (or its `n_per_class` subsample, the images the classifier of
the same seed sees); the epoch with the lowest validation loss (negative ELBO for VAE/CVAE,
denoising loss for DAE) is kept. Writes metrics.jsonl, checkpoints, generator_metrics.json and
figures (reconstructions, samples per class, latent interpolations, loss curves). Expected: the
default CVAE on face_mask_detection/2classes at 64 px trains in about 10 minutes on a 2-core CPU;
see the README's generator table for measured figures.
"""

import ml_collections

from experiments.configs import default


def get_config(preset: str = "default"):
  config = default.get_config()
  config.model = "cvae"  # a kind of vaeaug.kinds: dae, vae, cvae, rvae, rcvae
  config.latent_dim = 64
  config.channels = ml_collections.config_dict.placeholder(tuple)  # None: the model's default widths
  config.upsample = "subpixel"  # subpixel, resize, transpose (slow backward on CPU)
  config.xla_cpu_ynn_fusions = False  # 13-34% faster autoencoder steps on CPU without them
  config.likelihood = "bernoulli"  # bernoulli (BCE) or gaussian (MSE with a learned scale)
  config.learned_scale = True
  config.beta = 1.0
  config.kl_warmup_epochs = 5.0  # KL weight rises linearly from 0 to beta over these epochs
  # Free bits: each latent dimension's KL counts as at least this many nats in the training loss (0: off).
  config.free_bits = 0.0
  # dataset "pool" (the unlabeled face pool, unconditional kinds only): the share held out, by group, for
  # early stopping.
  config.pool_validation_fraction = 0.05

  config.noise = ml_collections.ConfigDict()  # DAE corruption
  config.noise.kind = "gaussian"  # gaussian, salt_pepper, masking
  config.noise.sigma = 0.1
  config.noise.p = 0.05
  config.noise.mask_fraction = 0.25

  config.epochs = 40
  config.patience = 8
  config.min_delta = 0.0
  config.figures = True
  config.max_steps = ml_collections.config_dict.placeholder(int)  # a safety net: early stopping ends training

  if preset == "default":
    pass
  elif preset in ("pool", "converged"):
    # 64 px residual VAE with a Gaussian likelihood (bounded learned scale), trained until validation stops
    # improving by min_delta nats per image for `patience` epochs; max_steps is only a safety net.
    config.model = "rvae"
    config.likelihood = "gaussian"
    config.latent_dim = 128
    # Residual blocks only at 16x16 and below: blocks at 64 and 32 px cost most of a CPU step.
    config.channels = (16, 32, 64, 128, 256)
    config.blocks_per_stage = (0, 0, 1, 1, 1)
    config.kl_warmup_epochs = 2.0
    config.epochs = 100
    config.patience = 3
    # nats per image (12,288 dims): about 0.07 dB of PSNR near 22 dB; smaller gains per epoch are convergence
    config.min_delta = 100.0
    config.max_steps = 30000
    if preset == "pool":
      config.dataset = "pool"  # the unlabeled face pool (vaeaug.data.pool), 5% held out by group
  else:
    raise ValueError(f"unknown generator preset {preset!r}; choose default, pool or converged")
  return config
