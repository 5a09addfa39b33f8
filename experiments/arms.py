"""The arms of the comparison sweep: their names, and where each arm's synthetic images come from.

An arm is `none`, or a `+`-joined set of `classic` (geometric and photometric augmentation), `mixup` (batch
mixup, `config.mixup_alphas`) and at most one `SOURCE[:SAMPLER]` of synthetic images: `classic`, `mixup`,
`cvae`, `classic+cvae`, `classic+mixup`, ...

* SOURCE is where synthetic images come from:
  - a generator kind of `vaeaug.kinds` (dae, vae, cvae, rvae, rcvae, and any kind registered later),
    trained on the cell's own real subset and shared by the arms of the cell that use it;
  - `pool_<kind>` for an unconditional kind: pretrained once on the unlabeled face pool
    (`vaeaug.data.pool`: the training splits of every dataset, labels dropped, near-duplicates of any
    validation or test image excluded) and shared by every cell; the cell's labelled images are encoded and
    synthesis happens around them. These are the arms that use the pool;
  - `noise_blur`: no model (a control): real images with the DAE's corruption and a blur.
* SAMPLER is a sampler of `vaeaug.synthesis` the kind supports (`GeneratorKind.samplers`). Without one, the
  config's `synthesis.<kind>_sampler` where it has that field, else the kind's default sampler.
  `counterfactual` turns real faces of the other class into the target class and keeps a sample only if
  the cell's real-data classifier (the `none` arm, at its threshold chosen on validation) agrees.

Arms follow from the registries: a new generator kind or sampler gives new arms without edits here.
"""

from __future__ import annotations

import dataclasses

from vaeaug import kinds, synthesis

POOL_PREFIX = "pool_"
NOISE_BLUR = "noise_blur"
MIXUP = "mixup"
COUNTERFACTUAL = "counterfactual"


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  classic: bool  # classic (geometric + photometric) augmentation on
  generator: str | None  # the source of synthetic images (kind, pool_<kind>, noise_blur), if any
  sampler: str | None = None  # the sampler named in the arm, if any (else the source's default)
  mixup: bool = False  # mixup of each training batch

  @property
  def kind(self) -> str | None:
    """The generator kind of the registry (None: no model)."""
    if self.generator is None or self.generator == NOISE_BLUR:
      return None
    return self.generator.removeprefix(POOL_PREFIX)

  @property
  def pool(self) -> bool:
    return bool(self.generator) and self.generator.startswith(POOL_PREFIX)

  @property
  def source(self) -> str | None:
    """The arm without `classic+`: arms with the same source share one synthetic set per cell group."""
    if self.generator is None:
      return None
    return self.generator + (f"-{self.sampler}" if self.sampler else "")

  @classmethod
  def parse(cls, name: str) -> Arm:
    if not isinstance(name, str):
      raise ValueError(f"an arm is a string, got {name!r}")
    if name == "none":
      return cls(name, False, None)
    parts = name.split("+")
    classic, mixup = "classic" in parts, MIXUP in parts
    rest = [p for p in parts if p not in ("classic", MIXUP)]
    if len(parts) != len(set(parts)) or len(rest) > 1:
      raise ValueError(f"unknown arm {name!r}: {usage()}")
    if not rest:
      return cls(name, classic, None, mixup=mixup)
    source, _, sampler = rest[0].partition(":")
    arm = cls(name, classic, source, sampler or None, mixup=mixup)
    problem = arm._problem()
    if problem:
      raise ValueError(f"unknown arm {name!r}: {problem}")
    return arm

  def _problem(self) -> str | None:
    if self.generator == NOISE_BLUR:
      return f"{NOISE_BLUR} takes no sampler" if self.sampler else None
    if self.kind not in kinds.names():
      return usage()
    kind = kinds.get(self.kind)
    if self.pool and kind.conditional:
      return f"the pool has no labels, so a conditional kind ({self.kind}) cannot be pretrained on it"
    if self.sampler is not None:
      if self.sampler not in synthesis.SAMPLERS:
        return f"{self.sampler!r} is not a sampler; choose from {sorted(synthesis.SAMPLERS)}"
      if self.sampler not in kind.samplers:
        return f"sampler {self.sampler!r} does not apply to {self.kind}; choose from {list(kind.samplers)}"
    return None

  def sampler_name(self, synthesis_config) -> str | None:
    """The sampler this arm uses under a sweep's `synthesis` config."""
    if self.generator is None:
      return None
    if self.generator == NOISE_BLUR:
      return NOISE_BLUR
    if self.sampler:
      return self.sampler
    configured = synthesis_config.get(f"{self.kind}_sampler")
    return configured or kinds.get(self.kind).default_sampler


def usage() -> str:
  generators = [*kinds.names(), *(POOL_PREFIX + k for k in kinds.names() if not kinds.get(k).conditional), NOISE_BLUR]
  return (
    "use none, or classic, mixup and at most one SOURCE[:SAMPLER] joined by '+', with SOURCE one of "
    f"{', '.join(generators)} and SAMPLER one of {', '.join(sorted(synthesis.SAMPLERS))}"
  )


def example_names() -> list[str]:
  """A list of arms for messages: none, classic, and each source with and without classic."""
  sources = [*kinds.names(), *(POOL_PREFIX + k for k in kinds.names() if not kinds.get(k).conditional), NOISE_BLUR]
  return ["none", "classic", MIXUP, f"classic+{MIXUP}", *sources, *(f"classic+{s}" for s in sources)]
