"""The vision tower's settings: one typed object, and the one parser of every way they are spelled.

A tower setting travels through many front ends: `DoveVisionTowerConfig`, `dove llava-train` flags, the saved
LLaVA stage (`dove_llava_lora.json`), lmms-eval `--model_args` (`tower_mode=fixed-16,min_tokens=8`), the original
LLaVA's `dove:PATH?mode=fixed&num_tokens=16` and `dove eval compare` rows. All of them go through
[`TowerSettings.parse`], so a new setting is one field here and every front end knows it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl


class TowerMode(str, Enum):
    """How the tower turns an image into features (the one place for these names)."""

    ADAPTIVE = "adaptive"  # DOVE's own length
    QUERY = "query"  # Q-DOVE: the length also follows a text query (the question)
    QUERY_NULL = "query-null"  # Q-DOVE given the null query (the whole image) whatever is asked
    FIXED = "fixed"  # DOVE truncated to `num_tokens`
    GRID = "grid"  # all VQGAN latents: the fixed-length baseline
    POOL = "pool"  # the VQGAN grid average-pooled to `num_tokens` cells (training-free on a grid LLaVA)
    RANDOM = "random"  # `num_tokens` grid cells drawn at random per image, in raster order (the selection floor)
    ENCODER = "encoder"  # a pretrained fixed-length encoder's last feature map (`dove_vlm.encoder_tower`)

    def __str__(self) -> str:
        return self.value


TOWER_FEATURES = ("tokens", "hidden")
# Modes that take k (`num_tokens`), spelled `NAME-K` (e.g. `pool-16`) or `mode=NAME,num_tokens=K`.
K_MODES = (TowerMode.FIXED, TowerMode.POOL, TowerMode.RANDOM)
MODE_SPELLINGS = ("grid, fixed-K, pool-K, random-K (or mode=fixed|pool|random with num_tokens=K), adaptive, query, "
                  "query-null, encoder")


class TowerSettingsError(ValueError):
    """A tower setting spelled wrong (unknown name, mode or value); the message lists what is valid."""


@dataclass(kw_only=True)
class TowerSettings:
    """Settings of a [`DoveVisionTower`]; `None` keeps the checkpoint's (or the DOVE config's) value.

    Args:
        mode: a [`TowerMode`] (a string is converted).
        num_tokens: k, every image's length in `fixed` mode (required there, refused elsewhere).
        feature: `tokens` (the k-dim continuous tokens) or `hidden` (the generator's hidden states).
        eos_threshold / min_tokens / max_tokens: the length knob (threshold in (0, 1), 1 <= min <= max).
        query_min_tokens / query_max_tokens: the length limits of an image with a (non-null) query.
        early_exit: run the generator in chunks and stop once every image has ended (same output).
        chunk_size: timestep slots per chunk with `early_exit`.
    """

    mode: TowerMode | None = None
    num_tokens: int | None = None
    feature: str | None = None
    eos_threshold: float | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    query_min_tokens: int | None = None
    query_max_tokens: int | None = None
    early_exit: bool | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _convert(f.name, getattr(self, f.name)))
        if self.mode in K_MODES and self.num_tokens is None:
            raise TowerSettingsError(f"mode={self.mode} needs num_tokens=K >= 1 (or write the mode as {self.mode}-K, "
                                     f"e.g. {self.mode}-16).")
        if self.num_tokens is not None and self.mode not in (None, *K_MODES):
            raise TowerSettingsError(f"num_tokens only applies to mode=fixed, pool or random, not mode={self.mode}.")
        for low, high in (("min_tokens", "max_tokens"), ("query_min_tokens", "query_max_tokens")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise TowerSettingsError(f"need {low} ({a}) <= {high} ({b}).")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | TowerSettings | None = None, **more: Any) -> TowerSettings:
        """Settings from any spelling: a mode (`"fixed-16"`, `"query-null"`), `"key=value"` pairs joined by `,` or
        `&` (`"mode=fixed,num_tokens=16"`, a `dove:PATH?...` query string), or a mapping. `tower_mode` is accepted
        as another name of `mode` (lmms-eval's). Keyword arguments are merged over `spec`; values that are
        `None`, `""` or `"none"` mean "keep". Raises [`TowerSettingsError`] naming the bad setting and the valid
        ones."""
        values: dict[str, Any] = {}
        if isinstance(spec, TowerSettings):
            values.update(spec.to_dict())
        elif isinstance(spec, Mapping):
            values.update(spec)
        elif isinstance(spec, str) and spec.strip():
            text = spec.strip()
            if "=" in text:
                values.update(parse_qsl(text.replace(",", "&"), keep_blank_values=True, strict_parsing=False))
                if not values:
                    raise TowerSettingsError(f"cannot read tower settings from {spec!r}; write key=value pairs "
                                             f"separated by commas, with keys among: {', '.join(cls.names())}.")
            else:
                values["mode"] = text
        elif spec is not None and not isinstance(spec, str):
            raise TowerSettingsError(f"tower settings must be a string or a mapping, got {type(spec).__name__}.")
        values.update(more)
        if "tower_mode" in values:
            if values.get("mode") not in (None, "", values["tower_mode"]):
                raise TowerSettingsError("give the tower mode once: mode= or tower_mode=, not both.")
            values["mode"] = values.pop("tower_mode")
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise TowerSettingsError(f"unknown tower setting(s) {', '.join(map(repr, unknown))}; valid settings: "
                                     f"{', '.join(cls.names())}.")
        values = {k: v for k, v in values.items() if not _is_unset(v)}
        mode = values.get("mode")
        if isinstance(mode, str):
            named = _mode_with_k(mode)
            if named is not None:
                k_mode, k = named
                if values.get("num_tokens") not in (None, k, str(k)):
                    raise TowerSettingsError(f"mode {mode!r} says k={k} but num_tokens={values['num_tokens']}.")
                values["mode"], values["num_tokens"] = k_mode, k
        return cls(**values)

    def to_dict(self, drop_unset: bool = True) -> dict[str, Any]:
        """Plain values (the mode as its string), for JSON files and `from_pretrained` overrides."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["mode"] is not None:
            out["mode"] = out["mode"].value
        return {k: v for k, v in out.items() if v is not None} if drop_unset else out

    def to_string(self) -> str:
        """The compact spelling that `parse` reads back: `"fixed-16"`, `"pool-16"`, or `"adaptive,min_tokens=24"`."""
        values = self.to_dict()
        mode = values.pop("mode", None)
        if mode in {m.value for m in K_MODES}:
            mode = f"{mode}-{values.pop('num_tokens')}"
        pairs = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]
        return ",".join(([f"mode={mode}"] if mode and pairs else [mode] if mode else []) + pairs)

    def merged(self, other: TowerSettings) -> TowerSettings:
        """These settings with `other`'s set fields over them (a new mode drops a stale `num_tokens`)."""
        values = self.to_dict()
        if other.mode is not None and other.mode not in K_MODES:
            values.pop("num_tokens", None)
        values.update(other.to_dict())
        return TowerSettings.parse(values)

    @classmethod
    def of(cls, config) -> TowerSettings:
        """The settings a tower config holds (every field, unset ones as `None`)."""
        return cls.parse({name: getattr(config, name, None) for name in cls.names()})


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def _mode_with_k(mode: str) -> tuple[TowerMode, int] | None:
    """`"pool-16"` → `(TowerMode.POOL, 16)` for the modes that take k; `None` for a plain mode name. A k that is
    not a whole number >= 1 (`fixed-0`, `pool--3`, `random-x`) is refused, naming the spelling."""
    text = mode.strip().lower().replace("_", "-")
    for k_mode in K_MODES:
        if text.startswith(k_mode.value) and text != k_mode.value:
            suffix = text.removeprefix(k_mode.value)
            digits = suffix.removeprefix("-")
            if not digits.isdigit() or not suffix.startswith("-") and k_mode is not TowerMode.FIXED:
                raise TowerSettingsError(f"unknown tower mode {mode!r}; choose one of: {MODE_SPELLINGS}.")
            if int(digits) < 1:
                raise TowerSettingsError(f"tower mode {mode!r}: k must be a whole number >= 1, got {digits}; "
                                         f"e.g. {k_mode.value}-16.")
            return k_mode, int(digits)
    return None


_INT_FIELDS = ("num_tokens", "min_tokens", "max_tokens", "query_min_tokens", "query_max_tokens", "chunk_size")


def _convert(name: str, value: Any) -> Any:
    """One field's value, typed and range-checked (strings come from command lines and query strings)."""
    if _is_unset(value):
        return None
    if name == "mode":
        if isinstance(value, TowerMode):
            return value
        text = str(value).strip().lower().replace("_", "-")
        try:
            return TowerMode(text)
        except ValueError:
            raise TowerSettingsError(f"unknown tower mode {value!r}; choose one of: {MODE_SPELLINGS}.") from None
    if name == "feature":
        if value not in TOWER_FEATURES:
            raise TowerSettingsError(f"unknown feature {value!r}; choose one of: {', '.join(TOWER_FEATURES)}.")
        return value
    if name == "early_exit":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise TowerSettingsError(f"early_exit={value!r} is not a boolean; write true or false.")
    if name == "eos_threshold":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TowerSettingsError(f"eos_threshold={value!r} is not a number; give one in (0, 1).") from None
        if not (math.isfinite(number) and 0.0 < number < 1.0):
            raise TowerSettingsError(f"eos_threshold must be in (0, 1), got {value!r}.")
        return number
    if name in _INT_FIELDS:
        if isinstance(value, bool):
            raise TowerSettingsError(f"{name} must be an integer >= 1, got {value!r}.")
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 1:
            raise TowerSettingsError(f"{name} must be an integer >= 1, got {value!r}.")
        return number
    return value


__all__ = ["K_MODES", "TOWER_FEATURES", "TowerMode", "TowerSettings", "TowerSettingsError"]
