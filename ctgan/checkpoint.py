"""checkpoint.pt: what a training writes after every scale, and rebuilding a model from it.

A checkpoint holds the state_dicts of the generator pyramid, the discriminator and both optimisers,
the noise amplitudes, the fixed reconstruction noise, the per-scale RNG states, the resolved
config, the scale shapes and spacings and the source geometry (``FORMAT_VERSION``). It is written
atomically (``ctgan.io.atomic_write``) and read with weights-only unpickling.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ctgan.config import Config, config_from_dict
from ctgan.io import atomic_write
from ctgan.layers import load_weights
from ctgan.nets import Discriminator, GeneratorPyramid, build_generator_pyramid

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class PyramidLike(Protocol):
    """What training needs from ``ctgan.preprocess.TrainingPyramid``."""

    volumes: Sequence[np.ndarray]
    spacings_zyx_mm: Sequence[Sequence[float]]
    meta: Mapping[str, Any]


@dataclass
class RunState:
    generator: GeneratorPyramid
    discriminator: Discriminator | None
    noise_amplitudes: list[float]
    reconstruction_noise: list[torch.Tensor]
    completed_scales: int = 0
    optimizer_states: dict[str, Any] = field(default_factory=dict)
    rng_states: dict[str, torch.Tensor] = field(default_factory=dict)


def checkpoint_payload(
    cfg: Config, seed: int, state: RunState, pyramid: PyramidLike, shapes: list[tuple[int, ...]]
) -> dict[str, Any]:
    assert state.discriminator is not None
    return {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "seed": int(seed),
        "completed_scales": state.completed_scales,
        "num_scales": len(shapes),
        "generator_architecture": state.generator.architecture(),
        "generator": {k: v.detach().cpu() for k, v in state.generator.state_dict().items()},
        "discriminator_architecture": {
            "channels": cfg.train.discriminator_channels,
            "norm": state.generator.norm,
        },
        "discriminator": {k: v.detach().cpu() for k, v in state.discriminator.state_dict().items()},
        "optimizers": state.optimizer_states,
        "noise_amplitudes": [float(a) for a in state.noise_amplitudes],
        "reconstruction_noise": [z.detach().cpu() for z in state.reconstruction_noise],
        "rng_states": {k: v.cpu() for k, v in state.rng_states.items()},
        "torch_rng_state": torch.get_rng_state(),
        "scale_shapes": [list(s) for s in shapes],
        "scale_spacings_zyx_mm": [[float(v) for v in s] for s in pyramid.spacings_zyx_mm],
        "source": _plain(dict(pyramid.meta)),
        # the training pyramid itself (float32, coarsest first): random samples that start above
        # scale 0 (train.sample_start_scale) start from the real volume of the scale below
        "real_volumes": [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in pyramid.volumes],
    }


def _plain(value: Any) -> Any:
    """Make meta JSON-like (numpy scalars/arrays to Python) so weights_only loading accepts it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict (weights-only unpickling) and check its format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the model first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError or UnpicklingError
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated or "
            f"not a ctgan checkpoint: delete it and retrain"
        ) from err
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ValueError(f"{path} is not a ctgan checkpoint (no format_version); retrain the model")
    if payload["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {payload['format_version']}, this code reads "
            f"{FORMAT_VERSION}; retrain the model with this version of ctgan"
        )
    return payload


def restore_generator(payload: dict[str, Any], path: Path) -> GeneratorPyramid:
    arch = payload["generator_architecture"]
    generator = build_generator_pyramid(
        arch["model"], int(arch["channels"]), arch["norm"], [int(d) for d in arch["depths"]]
    )
    return load_weights(
        generator,
        payload["generator"],
        f"checkpoint {path} does not match the generator architecture it declares ({{reason}}); "
        f"it was written by another version of ctgan: retrain the model",
    )


def restore_discriminator(payload: dict[str, Any], path: Path) -> Discriminator:
    arch = payload["discriminator_architecture"]
    discriminator = Discriminator(int(arch["channels"]), arch["norm"])
    return load_weights(
        discriminator,
        payload["discriminator"],
        f"checkpoint {path} does not match the discriminator architecture ({{reason}}); "
        f"retrain the model",
    )


@dataclass
class TrainedModel:
    """A trained pyramid rebuilt from its checkpoint alone (eval mode, frozen, float32)."""

    config: Config
    generator: GeneratorPyramid
    noise_amplitudes: list[float]
    reconstruction_noise: list[torch.Tensor]
    scale_shapes: list[tuple[int, int, int]]
    scale_spacings_zyx_mm: list[tuple[float, float, float]]
    source: dict[str, Any]
    model_dir: Path
    seed: int = 0
    # the training pyramid (D, H, W) float32 per scale; None in checkpoints written before it was
    # saved (such models can only sample from scale 0)
    real_volumes: list[np.ndarray] | None = None

    def reconstruct(self) -> torch.Tensor:
        """G(z_rec) at the finest scale, ``(1, 1, D, H, W)``."""
        with torch.no_grad():
            result = self.generator(self.reconstruction_noise)
        assert isinstance(result, torch.Tensor)
        return result


def find_checkpoint(model_dir: str | Path) -> Path:
    """``model_dir/checkpoint.pt``, or that of its single ``seed<k>/`` subfolder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} not found; train the model first")
    direct = model_dir / CHECKPOINT_NAME
    if direct.is_file():
        return direct
    seeds = sorted(p for p in model_dir.glob(f"seed*/{CHECKPOINT_NAME}") if p.is_file())
    if len(seeds) == 1:
        return seeds[0]
    if len(seeds) > 1:
        names = ", ".join(p.parent.name for p in seeds)
        raise ValueError(
            f"{model_dir} holds several seeds ({names}); pass one seed folder, e.g. "
            f"{seeds[0].parent}"
        )
    raise FileNotFoundError(
        f"{model_dir} is not a model folder: no {CHECKPOINT_NAME} in it or in a seed<k>/ "
        f"subfolder; pass models/<model>-<setting>/ or its seed folder"
    )


def load_trained(model_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a trained model from ``checkpoint.pt`` alone (no params.yaml needed)."""
    path = find_checkpoint(model_dir)
    payload = read_checkpoint(path)
    generator = restore_generator(payload, path).float().to(device)
    generator.requires_grad_(False)
    generator.eval()
    completed = int(payload["completed_scales"])
    if completed < int(payload["num_scales"]):
        logger.warning(
            "%s holds %d of %d scales (training was interrupted); using the trained ones",
            path,
            completed,
            payload["num_scales"],
        )
    return TrainedModel(
        config=config_from_dict(payload["config"]),
        generator=generator,
        noise_amplitudes=[float(a) for a in payload["noise_amplitudes"]],
        reconstruction_noise=[
            z.float().to(device) for z in payload["reconstruction_noise"][:completed]
        ],
        scale_shapes=[tuple(int(v) for v in s) for s in payload["scale_shapes"][:completed]],  # type: ignore[misc]
        scale_spacings_zyx_mm=[
            tuple(float(v) for v in s)  # type: ignore[misc]
            for s in payload["scale_spacings_zyx_mm"][:completed]
        ],
        source=dict(payload["source"]),
        model_dir=path.parent,
        seed=int(payload["seed"]),
        real_volumes=(
            [v.float().numpy() for v in payload["real_volumes"][:completed]]
            if "real_volumes" in payload
            else None
        ),
    )
