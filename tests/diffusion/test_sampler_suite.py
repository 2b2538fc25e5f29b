"""The ``sampler`` benchmark suite builds its cases and its providers agree with its
float64 ground truth (a one-step loop keeps this under a few seconds on CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lddm_fast.diffusion.schedules import alphas_cumprod, betas_for
from lddm_fast.models.config import preset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402
from suites import sampler as suite  # noqa: E402


def test_cpu_quick_case_runs_with_parity(monkeypatch):
    monkeypatch.setitem(suite.STEPS, "cpu", 1)
    (case,) = suite.cases("cpu", torch.float32, quick=True, compile_=False)
    assert case.params | {"default_backends": None} == {
        "preset": "phantom64",
        "batch": 1,
        "steps": 1,
        "sampler": "ddim",
        "default_backends": None,
    }
    assert list(case.providers) == ["eager", "default"]
    assert set(case.notes) == {"compile", "graph"}
    rows = harness.run_case(case, "cpu", {"copy_gbs": 10.0}, quick=True)
    timed = {r["provider"]: r for r in rows if "median_ms" in r}
    assert set(timed) == {"eager", "default"}
    # The one step goes from t = 999 to the clean latent in eps form, (x - sigma eps) / alpha:
    # float32 rounding of the two O(1) terms is multiplied by 1 / alpha (157 on the linear
    # schedule), while a v-prediction preset's result is O(1). A few ulps of that, relative
    # to max |result|; a wrong update or a dropped term is off by O(1). (The pipeline's 25
    # trailing steps never go from t = 999 to the clean end in one step.)
    config = preset("phantom64")
    abar = alphas_cumprod(betas_for(config.beta_schedule, config.num_train_timesteps))
    alpha = abar[-1].sqrt().item()
    bound = 4 * torch.finfo(torch.float32).eps / alpha
    for row in timed.values():
        assert row["parity_ok"] and row["max_rel"] < bound, row
