"""What machine a measurement ran on: CPU model, usable cores, SIMD flags, the measured clock and the
fp32 peak derived from them (`machine()`), a matmul's achieved GFLOP/s, and where a measurement's
record goes (`write_record`). Shared by `vaeaug-benchmark` and `vaeaug-sweep-modes`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _read(path: str) -> str:
  try:
    return Path(path).read_text()
  except OSError:
    return ""


def _lscpu() -> dict:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return {}
  return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(void) {
  unsigned long long n = 100000000ULL, x = 0; double best = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    for (unsigned long long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    double ghz = 4.0 * n / (now() - t0) / 1e9; if (ghz > best) best = ghz;
  }
  printf("%f\n", best); return (int)(x & 1);
}
"""


def measured_clock_ghz() -> float | None:
  """Core clock under load, from a chain of dependent integer adds (one per cycle) timed in thread
  CPU time (so preemption by other jobs does not count); None without a C compiler / on non-x86."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return None
  try:
    with tempfile.TemporaryDirectory() as tmp:
      (Path(tmp) / "clock.c").write_text(_CLOCK_C)
      subprocess.run(["cc", "-O2", "-o", f"{tmp}/clock", f"{tmp}/clock.c"], check=True, capture_output=True, timeout=60)
      return float(subprocess.run([f"{tmp}/clock"], capture_output=True, text=True, timeout=60).stdout)
  except (OSError, subprocess.SubprocessError, ValueError):
    return None


def machine() -> dict:
  """CPU model, usable cores, SIMD flags and the fp32 peak derived from them."""
  info = _read("/proc/cpuinfo")
  lscpu = _lscpu()
  field = lambda name: (re.search(rf"^{name}\s*:\s*(.*)$", info, re.M) or [None, ""])[1].strip()  # noqa: E731
  flags_ = set(field("flags").split())
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  vendor, family = field("vendor_id"), int(field("cpu family") or 0)
  nominal_mhz = float(lscpu.get("CPU max MHz") or field("cpu MHz") or 0)
  measured = measured_clock_ghz()
  # The measured clock when there is one: a VM's nominal MHz is the base clock, and boost is what runs.
  if measured:
    mhz = 1e3 * measured
    clock_source = f"measured with a dependent-add loop; nominal {nominal_mhz / 1e3:.2f} GHz"
  else:
    mhz = nominal_mhz
    clock_source = "lscpu 'CPU max MHz'" if lscpu.get("CPU max MHz") else "/proc/cpuinfo 'cpu MHz', nominal"
  if "avx512f" in flags_:
    lanes, isa = 16, "AVX-512"
    # Zen 4 (family 25) runs 512-bit ops on 256-bit units; Zen 5 (26) and Intel server cores have 512-bit FMAs.
    if vendor == "AuthenticAMD" and family == 25:
      lanes, isa = 8, "AVX-512 on 256-bit units (Zen 4)"
  elif "avx2" in flags_ and "fma" in flags_:
    lanes, isa = 8, "AVX2+FMA"
  else:
    lanes, isa = 4, "SSE"
  fma_units = 2  # FMA pipes per core on x86 server cores since Haswell / Zen (a few Intel SKUs have 1)
  peak = cores * fma_units * lanes * 2 * mhz / 1e3  # GFLOP/s; an FMA is 2 FLOPs
  return {
    "cpu": field("model name") or platform.processor(),
    "vendor": vendor,
    "family": family,
    "model": int(field("model") or 0),
    "cores": cores,
    "clock_mhz": round(mhz),
    "nominal_mhz": nominal_mhz,
    "clock_source": clock_source,
    "isa": isa,
    "bf16": "avx512_bf16" in flags_,
    "amx": "amx_tile" in flags_,
    "hypervisor": "hypervisor" in flags_,
    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "peak_gflops": round(peak, 1),
    "peak_derivation": (
      f"{cores} cores x {fma_units} FMA units x {lanes} fp32 lanes ({isa}) x 2 FLOP/FMA x "
      f"{mhz / 1e3:.2f} GHz ({clock_source}) = {peak:.0f} GFLOP/s"
    ),
  }


def measured_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """fp32 GFLOP/s of one large XLA matmul: what this machine attains in practice."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * size**3 / min(times) / 1e9


def write_record(out_dir: str, name: str | None, prefix: str, info: dict, result: dict, table: str) -> None:
  """`<out_dir>/<name>.json` and `.md`; the default name is `<prefix><date>_<cpu>-<cores>c`."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cpu = re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-")
  stem = name or f"{prefix}{datetime.date.today().isoformat()}_{cpu}-{info['cores']}c"
  (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / f"{stem}.md").write_text(table)
  print(f"wrote {out / stem}.json and .md", file=sys.stderr)
