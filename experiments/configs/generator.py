r"""Autoencoder training (DAE, VAE or CVAE) on a dataset's real training split, selected on validation.

  vaeaug-train-generator --workdir=/tmp/cvae --config=generator
  vaeaug-train-generator --workdir=/tmp/dae --config=generator \
      --config.model=dae --config.noise.kind=masking --config.n_per_class=50 --config.seed=2

Trained on the training split only (or its `n_per_class` subsample, the images the classifier of
the same seed sees); the epoch with the lowest validation loss (negative ELBO for VAE/CVAE,
denoising loss for DAE) is kept. Writes metrics.jsonl, checkpoints, generator_metrics.json and
figures (reconstructions, samples per class, latent interpolations, loss curves). Expected: the
default CVAE on face_mask_detection/2classes at 64 px trains in about 10 minutes on a 2-core CPU;
see the README's generator table for measured figures.
"""

import ml_collections

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model = "cvae"  # dae, vae, cvae
  config.latent_dim = 64
  config.channels = ml_collections.config_dict.placeholder(tuple)  # None: the model's default widths
  config.upsample = "subpixel"  # subpixel, resize, transpose (slow backward on CPU)
  config.xla_cpu_ynn_fusions = False  # 13-34% faster autoencoder steps on CPU without them
  config.likelihood = "bernoulli"  # bernoulli (BCE) or gaussian (MSE with a learned scale)
  config.learned_scale = True
  config.beta = 1.0
  config.kl_warmup_epochs = 5.0  # KL weight rises linearly from 0 to beta over these epochs

  config.noise = ml_collections.ConfigDict()  # DAE corruption
  config.noise.kind = "gaussian"  # gaussian, salt_pepper, masking
  config.noise.sigma = 0.1
  config.noise.p = 0.05
  config.noise.mask_fraction = 0.25

  config.epochs = 40
  config.patience = 8
  config.min_delta = 0.0
  config.figures = True
  return config
