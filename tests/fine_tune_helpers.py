"""`train-ae --init --freeze-encoder` runs on the tiny preset, shared by the trainer
tests of what a fine-tune adds (a texture code, a displacement head trained on the
phantom's motion)."""

import json

import torch

from lddm_fast.cli import main
from lddm_fast.models import preset
from lddm_fast.models.checkpoint import LDDMModels, from_pretrained

TINY = ["--workers", "0", "--quiet", "--warmup", "1", "--eval-clips", "2", "--batch-size", "2"]


def config_file(tmp_path, **autoencoder) -> str:
    """The tiny preset with ``autoencoder`` fields replaced, as a JSON file."""
    config = preset("tiny").to_dict()
    config["autoencoder"].update(autoencoder)
    path = tmp_path / ("tiny_" + "_".join(f"{k}{v}" for k, v in autoencoder.items()) + ".json")
    path.write_text(json.dumps(config))
    return str(path)


def train(data, out, *extra) -> None:
    argv = ["train-ae", "--data", str(data), "--out", str(out), *TINY, *extra]
    assert main(argv) == 0


def fine_tune(data, tmp_path, base_config: str, config: str, *extra, base_steps: int = 1):
    """Train ``base_config`` for ``base_steps``, then fine-tune it as ``config`` with the
    encoder frozen and ``extra`` flags. Checks that the z encoder stayed bit-identical;
    returns the base autoencoder's state dict and the fine-tuned checkpoint."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    train(data, base, "--config", base_config, "--steps", str(base_steps))
    init = ["--init", str(base / "checkpoint"), "--freeze-encoder"]
    train(data, tuned, "--config", config, *init, *extra)
    before = from_pretrained(base / "checkpoint").autoencoder.state_dict()
    after: LDDMModels = from_pretrained(tuned / "checkpoint")
    state = after.autoencoder.state_dict()
    encoder = [n for n in before if n.startswith("encoder.")]
    assert encoder and all(torch.equal(state[n], before[n]) for n in encoder)
    return before, after
