r"""The comparison sweep: classifiers trained with and without autoencoder augmentation.

  vaeaug-compare                                   # preset "default", below
  vaeaug-compare --config=compare:full
  vaeaug-compare --config=compare:gpu --workdir=/gcs/or/local/dir
  vaeaug-compare --config.num_seeds=10 --config.arms='("none","classic","dae")'
  vaeaug-compare --config.n_per_class='(25,50,None)' --config.num_devices=1

(`python -m experiments.compare` and `--config=experiments/configs/compare.py:full` work too.)

`n_per_class` None means all training images (0 is rejected). The fields in SHARED_FIELDS (image
size, data directory, data seed, devices, dtype, logging and checkpointing) are set once, at the top
level: the nested `classifier` and `generator` configs hold references to them, so an override such
as `--config.num_devices=1` reaches the training of every cell. `data_seed` None draws each seed's
own real subset; set, every seed trains on the one subset it draws (initialisation and data order
still vary with the seed).

Arms (experiments/arms.py): `none`, or `classic`, `mixup` and at most one `SOURCE[:SAMPLER]` joined by `+`,
with SOURCE a generator kind of vaeaug.kinds trained on the cell's subset (dae, vae, cvae, rvae, rcvae),
`pool_<kind>` (pretrained once on the unlabeled face pool with `pool_generator`, shared by every cell) or
`noise_blur` (a control without a model), e.g.
`--config.arms='("none","classic","mixup","noise_blur","pool_rvae","pool_rvae:counterfactual")'`.
Counterfactual arms need the `none` arm: its classifier filters them. `quality` records each synthetic
set's validation quality in cells.jsonl.

A cell is (dataset, n_per_class, arm, seed). For one (dataset, n_per_class, seed) every arm sees the
same real training subset (stratified, nested over n_per_class), the same classifier initialisation
and the same real images in the same order (`synthesis.placement` "on_top": synthetic images are added
to every batch, never in place of real ones), so arms are compared *paired by seed*. A generator (DAE,
VAE, CVAE) is trained on exactly that real subset (never on validation or test) and shared by the arms
using it.

Presets (2-core CPU figures measured with the commands above; see experiments/results/README.md):
* default - face_mask_detection/2classes at 32 px, 50 images per class, arms none / classic / cvae /
  classic+cvae, 3 seeds, the small BN CNN. About 2 minutes on a 2-core CPU (117 s with a cold
  compile cache, 97 s warm, per-cell quality of the three CVAE sets included); prints the table: test
  balanced accuracy none .871 +- .046, classic .906 +- .066, cvae .824 +- .144, classic+cvae .875 +-
  .058 (protocol v2 placement, dataset version 1.1.0, AMD EPYC, AVX-512; other CPUs round
  differently). Three seeds at 50 per class cannot separate arms (balanced accuracy moves by ~.03
  between seeds there: "Facts the design relies on" in experiments/results/README.md); it shows the
  machinery, `v2` answers the question.
* full - (v1, superseded by v2) n_per_class 25 / 50 / 100 / 250 / all x all six arms x 5 seeds on face_mask_detection/2classes
  and face_mask12k/grouped, each cell also tested on the other datasets' test splits (cross-dataset
  table). About 1.5-2 hours on a 2-core CPU (`--shards=auto`: one single-core process per core, the
  fastest CPU mode); runs in the background and resumes when rerun.
* v2 - the decisive study (protocol v2, experiments/results/README.md): face_mask_detection/2classes and
  face_mask12k/grouped, n_per_class 25 / 50 / 100, arms V2_ARMS, 20 seeds, 32 px, cnn_bn3, classifiers
  and generators trained until early stopping, synthetic ratio (0.5 / 1 / 2) and mixup alpha (0.2 / 1)
  chosen per cell on validation. Resumable and shardable: run in sittings with `--shards=auto`;
  `--tables_only` rebuilds experiments/results/v2 from its cells.jsonl.
  v2_large_n (250 and all per class, 5 seeds), v2_resnet18 (resnet18_small, detection, 50 per class,
  5 seeds), v2_64px (detection, 50 per class, 10 seeds at 64 px) and v2_small_validation (detection,
  50 per class, selection on 50 validation images per class) are its checks, each in its own workdir.
* gpu - the full grid at 64 px with ResNet-18 (small-image stem) and full-width autoencoders,
  10 seeds: for a GPU/TPU job.
* tiny - 16 px, two seeds, a few steps: for tests.

How hyperparameters are chosen - on validation only, never on test:
* Fixed before any run: optimiser, learning rate and batch size (Adam 1e-3, batch 64, the classifier
  and generator defaults), the samplers and the autoencoder sizes (chosen from generator validation
  losses and classifier-accuracy-of-samples in the generator issue), and the training budget.
* Per cell: the classifier's epoch by validation ROC-AUC (threshold-free, steadier than accuracy at
  small n), its decision threshold by validation balanced accuracy, and the generator's epoch by
  validation loss (negative ELBO or denoising loss).
* `synthesis.synthetic_ratios` with several values: each augmented cell trains one classifier per
  ratio and keeps the ratio with the best validation ROC-AUC; only that classifier reads test.

Outputs (in --workdir, default experiments/results/<preset>): cells.jsonl, table.md, table.csv,
cross_dataset.md/.csv (when cross-dataset testing is on), summary.json, figures/; per-cell training
workdirs live under runs/ (checkpoints; not meant to be committed).
"""

import ml_collections

from experiments.configs import classifier as classifier_config
from experiments.configs import default
from experiments.configs import generator as generator_config

ALL_ARMS = ("none", "classic", "dae", "vae", "cvae", "classic+cvae")
DATASETS = ("face_mask_detection/2classes", "face_mask12k/grouped", "face_mask_observations/grouped")
# Top-level fields the nested classifier and generator configs hold by reference: one value, one override.
SHARED_FIELDS = (
  "image_size",
  "dataset_version",
  "data_dir",
  "data_seed",
  "num_devices",
  "distributed",
  "compute_dtype",
  "progress",
  "log_every_steps",
  "checkpoint_every_epochs",
  "checkpoint_min_seconds",
)


def get_config(preset: str = "default"):
  defaults = default.get_config()
  config = ml_collections.ConfigDict()
  config.preset = preset
  for key in SHARED_FIELDS:  # placeholders stay placeholders, so overrides are type-checked
    config[key] = defaults.get_ref(key) if defaults[key] is None else defaults[key]
  config.datasets = ("face_mask_detection/2classes",)
  # Real training images per class; None: all training images (class balance as in the split).
  config.n_per_class = (50,)
  # none, classic, dae, vae, cvae, or "classic+<generator>".
  config.arms = ("none", "classic", "cvae", "classic+cvae")
  config.num_seeds = 3
  config.first_seed = 0
  config.image_size = 32
  # Test every cell also on these datasets' test splits (except its own): the cross-dataset table.
  config.cross_test_datasets = ()

  # Small real subsets are repeated to at least this many images per epoch, so an epoch (one validation
  # check) is a few steps whatever n_per_class is. With synthesis.placement "on_top" every arm of a cell
  # runs the same steps per epoch, over the same real images.
  config.min_epoch_size = 1024
  # Persistent XLA compilation cache shared by all cells (and reruns); "" disables it.
  config.compilation_cache_dir = "~/.cache/vaeaug/jax"

  config.classifier = classifier_config.get_config()
  config.generator = generator_config.get_config()
  for sub in (config.classifier, config.generator):
    for key in SHARED_FIELDS:
      # Deleted first: assigned onto a placeholder, the reference would hang off the nested field's
      # own one, and an override of the nested field would cut it loose.
      del sub[key]
      sub[key] = config.get_ref(key)

  config.classifier.model = "cnn_bn3"
  config.classifier.epochs = 30
  config.classifier.patience = 8
  config.classifier.max_steps = 600  # caps epochs on large training sets
  config.classifier.figures = False
  config.classic_augment = "standard"  # vaeaug.data.augment preset for the "classic" arms
  # Mixup arms: one classifier per alpha, the cell keeps the one with the best validation ROC-AUC.
  config.mixup_alphas = (0.2, 1.0)
  # None: select on the whole validation split; k: on k validation images per class drawn with each seed
  # (as small as the training set: what a researcher with few labelled images can hold out).
  config.validation_n_per_class = ml_collections.config_dict.placeholder(int)

  config.generator.latent_dim = 32
  config.generator.channels = (16, 32, 64)
  config.generator.epochs = 30
  config.generator.patience = 6
  config.generator.max_steps = 500
  config.generator.kl_warmup_epochs = 3.0
  config.generator.figures = False

  config.synthesis = ml_collections.ConfigDict()
  # Synthetic images per real training image; several values: chosen per cell on validation ROC-AUC.
  config.synthesis.synthetic_ratios = (1.0,)
  # on_top: every batch holds the real images the `none` arm's batch holds, in the same order, plus
  # ratio x as many synthetic ones, so each arm sees each real image equally often; mixed: synthetic
  # images join the training set (the v1 protocol: fewer real images per step).
  config.synthesis.placement = "on_top"
  # real: synthetic images in the real subset's class proportions; equal: split equally (v1).
  config.synthesis.class_proportions = "real"
  config.synthesis.dae_sampler = "denoise"  # a DAE has no prior: it re-noises and denoises real images
  config.synthesis.vae_sampler = "gmm"  # unconditional VAE: a per-class Gaussian mixture in latent space
  config.synthesis.cvae_sampler = "prior"  # CVAE: z ~ N(0, I) decoded with the wanted label
  config.synthesis.temperature = 1.0
  # Keep only samples that the cell's own "none" classifier (real data only, selected on
  # validation) assigns to the intended class with probability >= tau; 0 disables filtering.
  config.synthesis.filter_tau = 0.0
  # Several thresholds (0: unfiltered), e.g. (0.0, 0.5): one synthetic set and classifier per threshold and
  # ratio, chosen per cell on validation like the ratio; () uses filter_tau alone.
  config.synthesis.filter_taus = ()
  config.synthesis.figure_samples = 8  # per class, in the sample-grid figures
  # noise_blur control: the DAE's corruption (config.generator.noise) then a Gaussian blur of this std in
  # pixels (`synthesis.calibrate_blur_sigma` measures the blur that matches a trained DAE's output).
  config.synthesis.blur_sigma = 1.0
  # counterfactual sampler: how far along the class direction in latent space a face is moved (1: from its
  # class mean to the other's).
  config.synthesis.strength = 1.0

  # The generator arms `pool_<kind>` share: pretrained once on the unlabeled face pool (vaeaug.data.pool)
  # at the sweep's image size, stopped early on a held-out 5% of the pool.
  # The recipe of `vaeaug-train-generator --config=generator:pool`, at the sweep's image size.
  config.pool_generator = generator_config.get_config("pool")
  for key in SHARED_FIELDS:
    del config.pool_generator[key]
    config.pool_generator[key] = config.get_ref(key)

  # Per-cell quality of synthetic sets, on validation (experiments.cell_quality), in cells.jsonl.
  config.quality = ml_collections.ConfigDict()
  config.quality.enabled = True  # validation loss/PSNR, Frechet, k-NN precision/recall, acceptance
  config.quality.cas = True  # also a classifier trained on the synthetic set alone (one training per set)

  config.progress = False  # per-step lines of each cell; the sweep prints one line per cell
  config.log_every_steps = 8
  # A save per 16-step epoch was ~20% of a classifier cell's time on CPU: epoch-end saves at least
  # 30 s apart, so a cell shorter than that saves once, at its end, and a kill redoes at most about
  # 30 s of a longer one (resume replays the epochs since the save exactly: results do not change).
  config.checkpoint_every_epochs = 1
  config.checkpoint_min_seconds = 30.0

  if preset == "default":
    pass
  elif preset == "full":
    # The v1 study (superseded by v2): synthetic images joined the training set, split equally over classes.
    config.synthesis.placement = "mixed"
    config.synthesis.class_proportions = "equal"
    config.datasets = DATASETS[:2]
    config.n_per_class = (25, 50, 100, 250, None)
    config.arms = ALL_ARMS
    config.num_seeds = 5
    config.cross_test_datasets = DATASETS
    # Sized for about 1.5 hours on a 2-core CPU (two one-core shards): shorter budgets than default.
    config.classifier.max_steps = 360
    config.classifier.patience = 6
    config.generator.max_steps = 240
    config.generator.patience = 4
  elif preset in V2_PRESETS:
    _v2(config, preset)
  elif preset == "gpu":
    config.datasets = DATASETS[:2]
    config.n_per_class = (25, 50, 100, 250, None)
    config.arms = ALL_ARMS
    config.num_seeds = 10
    config.cross_test_datasets = DATASETS
    config.image_size = 64
    config.classifier.model = "resnet18_small"
    config.classifier.max_steps = 3000
    config.classifier.epochs = 60
    config.classifier.patience = 10
    config.generator.latent_dim = 64
    config.generator.channels = None  # the autoencoders' full default widths
    config.generator.max_steps = 4000
    config.generator.epochs = 60
    config.min_epoch_size = 4096
  elif preset == "tiny":
    # Quality has its own tests (tests/test_kinds.py turns it on): the other tiny sweeps skip its classifiers.
    config.quality.enabled = False
    config.quality.cas = False
    for generator in (config.generator, config.pool_generator):
      generator.update(channels=(8, 16), latent_dim=8, epochs=2, batch_size=16, max_steps=8, kl_warmup_epochs=1.0)
    config.pool_generator.blocks_per_stage = (0, 1)
    config.pool_generator.figures = False
    config.image_size = 16
    config.n_per_class = (12,)
    config.num_seeds = 2
    config.min_epoch_size = 64
    config.log_every_steps = 2
    config.checkpoint_min_seconds = 0.0  # the kill-resume tests want a save per epoch
    config.classifier.epochs = 3
    config.classifier.patience = 3
    config.classifier.batch_size = 16
    config.classifier.max_steps = 12
  else:
    raise ValueError(f"unknown compare preset {preset!r}; choose default, full, {', '.join(V2_PRESETS)}, gpu or tiny")
  return config


V2_ARMS = (
  "none",
  "classic",
  "mixup",
  "noise_blur",
  "pool_dae",
  "pool_rvae",
  "pool_rvae:counterfactual",
  "cvae",
  "classic+pool_rvae",
  "classic+cvae",
)
V2_PRESETS = ("v2", "v2_large_n", "v2_resnet18", "v2_64px", "v2_small_validation")


def _v2(config, preset: str) -> None:
  """Protocol v2 (experiments/results/README.md, "Protocol v2"): converged classifiers, synthetic images on
  top of the real ones in the real class proportions, ratio and mixup alpha chosen per cell on validation."""
  config.datasets = DATASETS[:2]
  config.n_per_class = (25, 50, 100)
  config.arms = V2_ARMS
  config.num_seeds = 20
  config.image_size = 32
  config.cross_test_datasets = DATASETS
  config.synthesis.synthetic_ratios = (0.5, 1.0, 2.0)
  # Early stopping ends training: the caps are a safety net (reported per arm as `capped`).
  config.classifier.epochs = 200
  config.classifier.patience = 10
  # Validation ROC-AUC creeps up by 1e-4 steps for a hundred epochs at 25 images per class: only a gain of
  # .001 counts as progress (the best epoch is the first within .001 of the best).
  config.classifier.min_delta = 0.001
  config.classifier.max_steps = 5000
  config.generator.epochs = 200
  config.generator.patience = 8
  config.generator.max_steps = 5000
  config.quality.cas = False  # one more classifier per synthetic set; Frechet and k-NN precision/recall stay
  if preset == "v2_large_n":  # the classifiers trained properly on more data: 5 seeds
    config.n_per_class = (250, None)
    config.num_seeds = 5
  elif preset == "v2_resnet18":  # does the answer hinge on the classifier?
    config.datasets = DATASETS[:1]
    config.n_per_class = (50,)
    config.num_seeds = 5
    config.classifier.model = "resnet18_small"
  elif preset == "v2_64px":
    config.datasets = DATASETS[:1]
    config.n_per_class = (50,)
    config.num_seeds = 10
    config.image_size = 64
  elif preset == "v2_small_validation":  # as many validation images as training images
    config.datasets = DATASETS[:1]
    config.n_per_class = (50,)
    config.validation_n_per_class = 50
