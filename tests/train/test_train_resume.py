"""Both trainers end to end on a tiny phantom set, and exact resume: k steps, stop,
resume to 2k equals 2k steps straight."""

import json

import pytest
import torch

from lddm_fast import ops
from lddm_fast.cli import main
from lddm_fast.models.checkpoint import from_pretrained
from lddm_fast.train.state import latest_state, load_state

COMMON = [
    "--preset",
    "tiny",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--quiet",
    "--warmup",
    "2",
    "--eval-clips",
    "2",
]


def train_ae(data, out, *extra):
    assert main(["train-ae", "--data", str(data), "--out", str(out), *COMMON, *extra]) == 0


def train_diffusion(data, ae, out, *extra):
    argv = [
        "train-diffusion",
        "--data",
        str(data),
        "--autoencoder",
        str(ae),
        "--out",
        str(out),
        *COMMON,
        "--preview-images",
        "2",
        "--preview-steps",
        "2",
        "--cache-variants",
        "2",
        *extra,
    ]
    assert main(argv) == 0


def saved(run):
    tensors, info = load_state(latest_state(run))
    return tensors, info


def assert_same_state(a, b):
    (ta, ia), (tb, ib) = saved(a), saved(b)
    assert ia["step"] == ib["step"]
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-6, atol=1e-7, msg=key)


@pytest.fixture(scope="module")
def ae_run(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    train_ae(phantom_root, out, "--steps", "4", "--checkpoint-every", "2")
    return out


def test_train_ae_writes_a_loadable_checkpoint_with_meta(ae_run, phantom_root):
    models = from_pretrained(ae_run / "checkpoint")
    meta = models.meta
    assert meta["stage"] == "autoencoder" and meta["steps"] == 4 and meta["finished"]
    assert meta["denoiser_trained"] is False
    assert meta["command"].startswith("lddm-fast train-ae --data ")
    assert meta["data"]["layout"] == "phantom" and len(meta["data"]["sha256"]) == 64
    assert meta["wall_time_s"] >= 0 and meta["hardware"]["cpu_count"] >= 1
    m = meta["heldout_metrics"]
    assert m["clips"] == 2 and m["psnr_gain"] == pytest.approx(m["psnr"] - m["psnr_x0_repeated"])
    lines = [json.loads(x) for x in (ae_run / "log.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [1, 2, 3, 4]
    # Training runs on the default backend with a backward (cpp where it is built).
    trains_on = ops.default_choice("group_norm", "cpu", torch.float32, needs_grad=True)
    assert lines[0]["event"] == "start" and lines[0]["backends"]["group_norm"] == trains_on
    assert lines[-1]["event"] == "end"


def test_train_diffusion_then_the_pipeline_samples_from_the_run(ae_run, phantom_root, tmp_path):
    import lddm_fast

    out = tmp_path / "ldm"
    train_diffusion(phantom_root, ae_run, out, "--steps", "3", "--checkpoint-every", "3")
    pipe = lddm_fast.LDDMPipeline.from_pretrained(out / "checkpoint")
    meta = pipe.models.meta
    assert meta["stage"] == "diffusion" and meta["denoiser_trained"] is True
    assert pipe.config.latent_scale == pytest.approx(meta["latent_scale"])
    assert pipe.config.latent_scale != 1.0
    ae = from_pretrained(ae_run / "checkpoint").autoencoder.state_dict()
    for key, value in pipe.models.autoencoder.state_dict().items():
        assert torch.equal(value, ae[key]), f"the frozen autoencoder changed: {key}"
    videos = pipe(torch.zeros(2, 1, 32, 32), steps=2, seed=0).videos
    assert videos.shape == (2, 1, 5, 32, 32)
    assert (out / "previews" / "step-00000003.png").is_file()
    assert (out / "previews" / "step-00000003.gif").is_file()
    assert "val_loss" in meta["heldout_metrics"]


def test_train_ae_resumes_exactly(phantom_root, tmp_path):
    train_ae(phantom_root, tmp_path / "straight", "--steps", "6", "--checkpoint-every", "6")
    train_ae(phantom_root, tmp_path / "split", "--steps", "6", "--stop-at", "3")
    _, info = saved(tmp_path / "split")
    assert info["step"] == 3
    train_ae(phantom_root, tmp_path / "split", "--steps", "6", "--resume")
    assert_same_state(tmp_path / "straight", tmp_path / "split")
    first = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in first if "loss" in x]
    assert len(set(losses)) > 1  # it trained: the check above compares moving weights


def test_train_diffusion_resumes_exactly_with_ema_and_worker_loading(
    ae_run, phantom_root, tmp_path
):
    args = [
        "--steps",
        "6",
        "--checkpoint-every",
        "6",
        "--preview-images",
        "0",
        "--workers",
        "1",
        "--latent-cache",
        str(tmp_path / "cache"),
    ]
    train_diffusion(phantom_root, ae_run, tmp_path / "straight", *args)
    train_diffusion(phantom_root, ae_run, tmp_path / "split", *args, "--stop-at", "2")
    train_diffusion(phantom_root, ae_run, tmp_path / "split", *args, "--resume")
    assert_same_state(tmp_path / "straight", tmp_path / "split")
    tensors, _ = saved(tmp_path / "split")
    assert any(k.startswith("ema.") for k in tensors)


def test_resume_is_refused_when_the_run_differs_and_a_rerun_needs_resume(phantom_root, tmp_path):
    train_ae(phantom_root, tmp_path / "r", "--steps", "4", "--stop-at", "1")
    with pytest.raises(FileExistsError, match="--resume"):
        train_ae(phantom_root, tmp_path / "r", "--steps", "4")
    with pytest.raises(ValueError, match="seed differs"):
        train_ae(phantom_root, tmp_path / "r", "--steps", "4", "--resume", "--seed", "1")


def test_adversarial_run_resumes_exactly_and_exports_only_the_autoencoder(phantom_root, tmp_path):
    adv = ["--steps", "6", "--adv-weight", "0.5", "--adv-start", "2"]
    train_ae(phantom_root, tmp_path / "straight", *adv, "--checkpoint-every", "6")
    train_ae(phantom_root, tmp_path / "split", *adv, "--stop-at", "3")
    train_ae(phantom_root, tmp_path / "split", *adv, "--resume")
    assert_same_state(tmp_path / "straight", tmp_path / "split")
    tensors, _ = saved(tmp_path / "straight")
    assert int(tensors["model.steps_seen"]) == 6
    assert any(k.startswith("model.discriminator.") for k in tensors)

    lines = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    steps = [x for x in map(json.loads, lines) if "loss" in x]
    assert [x["adv_balance"] for x in steps[:2]] == [0.0, 0.0]
    assert all(x["adv_balance"] > 0 and x["adv_g"] != 0 for x in steps[2:])
    assert all(x["adv_d"] > 0 for x in steps)

    models = from_pretrained(tmp_path / "straight" / "checkpoint")
    assert models.meta["losses"]["adversarial"] == 0.5
    assert models.meta["losses"]["adversarial_start"] == 2
    keys = set(models.autoencoder.state_dict())
    assert keys and not any("discriminator" in k for k in keys)


def test_region_is_recorded_and_a_resume_must_keep_it(phantom_root, tmp_path):
    train_ae(phantom_root, tmp_path / "r", "--steps", "4", "--stop-at", "2", "--region", "auto")
    with pytest.raises(ValueError, match="region differs"):
        train_ae(phantom_root, tmp_path / "r", "--steps", "4", "--resume")
    train_ae(phantom_root, tmp_path / "r", "--steps", "4", "--resume", "--region", "auto")
    meta = from_pretrained(tmp_path / "r" / "checkpoint").meta
    assert meta["data"]["region"] == "auto" and meta["steps"] == 4
