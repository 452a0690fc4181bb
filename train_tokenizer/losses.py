"""DOVE losses: reconstruction (MSE + LPIPS + optional patch-GAN), the EOS-length loss with its dynamic
threshold, and the growing λ_eos schedule (`objectives.py` puts them together into the step loss)."""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dove_vlm.modeling_dove_blocks import high_pass


@dataclass
class ReconstructionLossOutput:
    loss: torch.Tensor  # scalar: mean of per_sample
    per_sample: torch.Tensor  # (B,) weighted sum of the terms, per image
    mse: torch.Tensor  # scalar, for logging
    lpips: torch.Tensor | None = None
    gan: torch.Tensor | None = None


# torchvision's ImageNet weights of the LPIPS trunks (what `lpips.LPIPS(pnet_rand=False)` would download).
TRUNK_WEIGHTS = {"alex": "AlexNet_Weights.IMAGENET1K_V1", "vgg": "VGG16_Weights.IMAGENET1K_V1"}
# Their file names in torch's hub cache (the basenames of the weights' URLs), so finding them needs no torchvision.
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class RandomLpipsTrunkError(ValueError):
    """LPIPS would use a random trunk where a real one is required (the paper preset)."""


def cached_trunk_weights(net: str = "alex") -> tuple[str | None, str]:
    """`(path or None, where torchvision keeps it)`: torchvision's ImageNet weights of the LPIPS trunk `net` when
    they are in its cache — the file `load_state_dict_from_url` reads before downloading
    (`$TORCH_HOME/hub/checkpoints/<name of the weights URL>`). Nothing is downloaded."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", TRUNK_FILES[net])
    return (path if os.path.isfile(path) else None), path


def require_lpips_trunk(net: str = "alex", trunk_weights: str | None = None) -> str:
    """The trunk weights file LPIPS will use (`trunk_weights`, else torchvision's cached one), or a
    `RandomLpipsTrunkError` saying how to provide one."""
    cached, expected = cached_trunk_weights(net) if net in TRUNK_WEIGHTS else (None, "")
    if trunk_weights or cached:
        return trunk_weights or cached
    raise RandomLpipsTrunkError(
        f"LPIPS would use a random {net} trunk: no --lpips-trunk file was given and torchvision's ImageNet weights "
        f"are not in its cache ({expected}). The paper preset needs the real trunk: put torchvision's file there (it "
        f"is what `torchvision.models.get_weight('{TRUNK_WEIGHTS.get(net, net)}').get_state_dict()` downloads), or "
        "pass --lpips-trunk FILE; to train with a random-feature LPIPS anyway, pass --allow-random-lpips.")


def build_lpips(net: str = "alex", trunk_weights: str | None = None, allow_random: bool = True) -> nn.Module:
    """LPIPS from the `lpips` package with its shipped linear calibration layers and, for the trunk (AlexNet/VGG),
    the first of: `trunk_weights` (a local torchvision state dict), torchvision's own cached ImageNet weights
    (`cached_trunk_weights`), else a random trunk. `lpips.LPIPS(pnet_rand=False)` would download the weights (and
    fail offline), so the trunk is always built random and then loaded from the file found.

    A random trunk still gives a useful perceptual (random-feature) loss and is allowed unless `allow_random` is
    False (the paper preset), where it is a `RandomLpipsTrunkError` saying how to get the real one. A warning says
    when the trunk is random. `model.trunk_source` is the weights file used, or None for a random trunk."""
    try:
        import lpips  # imports torchvision, which dove-vlm needs only here
    except (ImportError, RuntimeError) as err:
        raise ImportError(f"LPIPS needs the `lpips` package with a torchvision that matches torch ({err}); "
                          "reinstall them together, or train with --lpips-weight 0.") from err

    cached, expected = cached_trunk_weights(net) if net in TRUNK_WEIGHTS else (None, "")
    source = trunk_weights or cached or (None if allow_random else require_lpips_trunk(net))
    with warnings.catch_warnings():  # torchvision's deprecation notes about `pretrained=` inside lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if source:
        state = torch.load(source, map_location="cpu", weights_only=True)
        trunk = model.net
        # lpips splits torchvision's `features` into slices that keep the original layer indices.
        own = {f"{name}": p for name, p in trunk.named_parameters()}
        mapped = {}
        for key, value in state.items():
            if not key.startswith("features."):
                continue
            index = key.split(".")[1]
            for name in own:
                parts = name.split(".")
                if parts[1] == index and parts[-1] == key.split(".")[-1]:
                    mapped[name] = value
        missing = set(own) - set(mapped)
        if missing:
            raise ValueError(f"{source} does not hold torchvision {net} weights (missing {sorted(missing)[:3]}...).")
        trunk.load_state_dict({**trunk.state_dict(), **mapped})
    else:
        warnings.warn(f"LPIPS uses a random {net} backbone (no local weights given via lpips_trunk_weights, none in "
                      f"torchvision's cache at {expected}); its linear layers are the package's calibrated ones.",
                      stacklevel=2)
    model.trunk_source = source
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (as in taming-transformers' NLayerDiscriminator): a map of real/fake logits."""

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, num_layers):
            out = width * min(2**i, 8)
            layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                       nn.LeakyReLU(0.2)]
            channels = out
        layers += [nn.Conv2d(channels, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ReconstructionLoss(nn.Module):
    """`L_rec = mse_weight·MSE + lpips_weight·LPIPS + gan_weight·GAN`, per image and averaged."""

    def __init__(self, mse_weight: float = 1.0, lpips_weight: float = 0.1, gan_weight: float = 5e-10,
                 lpips_net: str = "alex", lpips_trunk_weights: str | None = None, use_gan: bool | None = None,
                 allow_random_lpips: bool = True):
        super().__init__()
        self.mse_weight, self.lpips_weight, self.gan_weight = mse_weight, lpips_weight, gan_weight
        self.lpips = build_lpips(lpips_net, lpips_trunk_weights, allow_random_lpips) if lpips_weight > 0 else None
        use_gan = gan_weight > 0 if use_gan is None else use_gan
        self.discriminator = PatchDiscriminator() if use_gan else None

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # a fixed metric: never dropout
        return self

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> ReconstructionLossOutput:
        if reconstruction.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ.")
        mse = (reconstruction - target).pow(2).flatten(1).mean(1)
        per_sample = self.mse_weight * mse
        lpips_value = gan_value = None
        if self.lpips is not None:
            lpips_value = self.lpips(reconstruction, target).flatten(1).mean(1)
            per_sample = per_sample + self.lpips_weight * lpips_value
        if self.discriminator is not None:
            gan_value = -self._fixed_discriminator(reconstruction).flatten(1).mean(1)  # hinge-GAN generator term
            per_sample = per_sample + self.gan_weight * gan_value
        return ReconstructionLossOutput(
            loss=per_sample.mean(), per_sample=per_sample, mse=mse.mean().detach(),
            lpips=None if lpips_value is None else lpips_value.mean().detach(),
            gan=None if gan_value is None else gan_value.mean().detach(),
        )

    def _fixed_discriminator(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits with its weights held constant: the generator's GAN term reaches the
        reconstruction only, never the discriminator's gradients (it has its own step, and under DDP its own
        gradient reduction)."""
        weights = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, weights, (images,))

    def discriminator_loss(self, reconstruction: torch.Tensor, target: torch.Tensor,
                           discriminator: nn.Module | None = None) -> torch.Tensor:
        """Hinge loss for the discriminator (reconstructions must be detached by the caller), in one pass over
        real and fake images; `discriminator`: the module to call (e.g. the DDP-wrapped one), by default
        `self.discriminator`."""
        if self.discriminator is None:
            raise RuntimeError("this ReconstructionLoss has no discriminator (gan_weight is 0).")
        logits = (discriminator or self.discriminator)(torch.cat([target, reconstruction]))
        real, fake = logits[: len(target)], logits[len(target) :]
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def eos_loss(p_eos: torch.Tensor, lengths: torch.Tensor, rec_per_sample: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-sample EOS-length loss, shape (B,).

    - `L_rec > T` (too lossy): `p_eos(m)` — pushing it down moves the end later;
    - else (good enough): `-(1/(m-1))·Σ_{i<m} p_eos(i)` — pulling earlier positions up moves the end earlier;
      for m == 1 there is nothing earlier and the loss is 0.
    `p_eos` is (B, n), `lengths` (B,) in [1, n] (1-based), `rec_per_sample` (B,) detached."""
    if p_eos.ndim != 2 or lengths.shape != p_eos.shape[:1] or rec_per_sample.shape != lengths.shape:
        raise ValueError(f"expected p_eos (B, n), lengths (B,), rec (B,); got {tuple(p_eos.shape)}, "
                         f"{tuple(lengths.shape)}, {tuple(rec_per_sample.shape)}.")
    n = p_eos.shape[1]
    lengths = lengths.long().clamp(1, n)
    at_end = p_eos.gather(1, (lengths - 1)[:, None])[:, 0]
    positions = torch.arange(n, device=p_eos.device)[None]
    before = (positions < (lengths - 1)[:, None]).to(p_eos.dtype)
    earlier_mean = (p_eos * before).sum(1) / (lengths - 1).clamp(min=1).to(p_eos.dtype)
    too_lossy = rec_per_sample > threshold
    return torch.where(too_lossy, at_end, -earlier_mean)


class DynamicThreshold:
    """T = mean reconstruction loss over the last `window` steps (the current batch's loss until any exist)."""

    def __init__(self, window: int = 100):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}.")
        self.window = window
        self.values: deque[float] = deque(maxlen=window)

    def value(self, current: float) -> float:
        return sum(self.values) / len(self.values) if self.values else float(current)

    def update(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(float(value))

    def state_dict(self) -> dict:
        return {"window": self.window, "values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.window = int(state["window"])
        self.values = deque((float(v) for v in state["values"]), maxlen=self.window)


def detail_error(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`(B,)` the mean squared high-pass part of the residual `reconstruction - target` (`high_pass`: the residual
    minus its box blur, 3 px at 32, 5 at 64). What is left is the error in edges and texture; the low-frequency
    part that a palette or background shift dominates is removed."""
    return high_pass(reconstruction.float() - target.float()).pow(2).flatten(1).mean(1)


class DifficultyQuantiles:
    """The running distribution of per-image difficulties over the last `window` steps, as length-dependent
    EOS thresholds: an image decoded at length m of n is too lossy when its difficulty is above the (m / n)
    quantile. The EOS loss then settles each image near `n · F(difficulty)`, F the running CDF, so lengths spread
    over 1..n by rank instead of splitting in two around one mean (the paper's threshold)."""

    def __init__(self, window: int = 100):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}.")
        self.window = window
        self.values: deque[torch.Tensor] = deque(maxlen=window)  # one CPU tensor of difficulties per step

    @staticmethod
    def _finite(values: list[float]) -> torch.Tensor:
        values = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        return values[torch.isfinite(values)]

    def thresholds(self, current: list[float], lengths: torch.Tensor, max_tokens: int) -> torch.Tensor:
        """`(B,)` on `lengths`' device: the (length / max_tokens) quantile of the history (of this step's
        difficulties `current` until any exist; +inf, i.e. never too lossy, when there are none)."""
        pool = torch.cat(list(self.values)) if self.values else self._finite(current)
        if not pool.numel():
            return torch.full(lengths.shape, float("inf"), device=lengths.device)
        levels = (lengths.detach().float().cpu() / max_tokens).clamp(0.0, 1.0)
        return torch.quantile(pool, levels).to(lengths.device)

    def update(self, values: list[float]) -> None:
        finite = self._finite(values)
        if finite.numel():
            self.values.append(finite)

    def state_dict(self) -> dict:
        return {"window": self.window, "values": [step.tolist() for step in self.values]}

    def load_state_dict(self, state: dict) -> None:
        self.window = int(state["window"])
        self.values = deque((self._finite(step) for step in state["values"]), maxlen=self.window)


class EosWeightSchedule:
    """λ_eos(step): `start` for `warmup_steps`, then grows to `end` over `ramp_steps` (geometrically for
    `kind="exponential"`, linearly for `"linear"`), then stays at `end`."""

    def __init__(self, start: float = 1e-3, end: float = 1.0, warmup_steps: int = 0, ramp_steps: int = 1000,
                 kind: str = "exponential"):
        if kind not in ("exponential", "linear"):
            raise ValueError(f"unknown schedule kind {kind!r}; choose 'exponential' or 'linear'.")
        if kind == "exponential" and (start <= 0 or end <= 0):
            raise ValueError(f"an exponential schedule needs start and end > 0, got {start} and {end}.")
        if warmup_steps < 0 or ramp_steps < 0:
            raise ValueError("warmup_steps and ramp_steps must be >= 0.")
        self.start, self.end, self.warmup_steps, self.ramp_steps, self.kind = start, end, warmup_steps, ramp_steps, kind

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start
        if self.ramp_steps == 0 or step >= self.warmup_steps + self.ramp_steps:
            return self.end
        t = (step - self.warmup_steps) / self.ramp_steps
        if self.kind == "linear":
            return self.start + t * (self.end - self.start)
        return self.start * (self.end / self.start) ** t
