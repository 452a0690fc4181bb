"""The rows of `dove eval compare`: which model folder runs in which tower mode with which adapter options.

The tower rows (grid, DOVE fixed-K and adaptive, Q-DOVE query and query-null, a pretrained encoder) each run the
model trained on that tower. The token-budget rows run the grid LLaVA, training-free, at k tokens per image:
`pool-K` (the grid average-pooled to k cells), `random-K` (k grid cells at random) and `fastv-K` (all 64 grid
tokens in, the k most attended kept after language-model layer `fastv_layer`). Their k come from a list or from
`auto`: the rounded mean token counts that DOVE adaptive and Q-DOVE measured in the same run, and a quarter of
the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dove_vlm.presets import COMPARE_FASTV_LAYER, COMPARE_MODEL_ARGS

AUTO = "auto"


@dataclass
class RunSpec:
    """One row of the comparison: a tower mode on a model folder; `trained` is False for the training-free rows
    (a method applied to a model trained without it)."""

    name: str
    mode: str
    pretrained: str
    model_args: dict = field(default_factory=dict)
    trained: bool = True


def mode_matrix(grid_model: str | None = None, dove_model: str | None = None, qdove_model: str | None = None,
                fixed_k: tuple[int, ...] = (), model_args: dict | None = None,
                query_null: bool = True, encoder_model: str | None = None) -> list[RunSpec]:
    """The tower rows: grid (base model), fixed-K and adaptive (DOVE model), query and (with `query_null`)
    query-null (Q-DOVE), encoder (a LLaVA trained on the pretrained encoder tower); every row gets the same
    adapter options `model_args` (default `COMPARE_MODEL_ARGS`)."""
    args = COMPARE_MODEL_ARGS if model_args is None else model_args
    specs = []
    if grid_model:
        specs.append(RunSpec("grid", "grid", grid_model))
    if dove_model:
        specs += [RunSpec(f"fixed-{k}", f"fixed-{k}", dove_model) for k in fixed_k]
        specs.append(RunSpec("adaptive", "adaptive", dove_model))
    if qdove_model:
        specs.append(RunSpec("query", "query", qdove_model))
        if query_null:
            specs.append(RunSpec("query-null", "query-null", qdove_model))
    if encoder_model:
        specs.append(RunSpec("encoder", "encoder", encoder_model))
    if not specs:
        raise ValueError("nothing to compare: give at least one of --grid-model, --dove-model, --qdove-model, "
                         "--encoder-model.")
    for spec in specs:
        spec.model_args = dict(args)
    return specs


def parse_k_list(text: str | None, flag: str) -> list[int] | str | None:
    """`--pool-k 8,16` → `[8, 16]`; `auto` → `"auto"`; empty → `None`. A k that is not a whole number >= 1 is
    refused, naming the flag and the value."""
    if text is None or not str(text).strip():
        return None
    if str(text).strip().lower() == AUTO:
        return AUTO
    values = []
    for item in str(text).split(","):
        item = item.strip()
        if not item.lstrip("-").isdigit() or int(item) < 1:
            raise ValueError(f"{flag} {text!r}: {item!r} is not a valid k; give whole numbers >= 1 separated by "
                             f"commas (e.g. 8,16), or auto.")
        values.append(int(item))
    return values


@dataclass
class BudgetRows:
    """The training-free token-budget rows on the grid LLaVA `grid_model`: k lists (or `"auto"`) per kind."""

    grid_model: str
    pool_k: list[int] | str | None = None
    random_k: list[int] | str | None = None
    fastv_k: list[int] | str | None = None
    fastv_layer: int | None = None
    model_args: dict = field(default_factory=lambda: dict(COMPARE_MODEL_ARGS))

    def kinds(self) -> dict[str, list[int] | str]:
        return {kind: ks for kind, ks in (("pool", self.pool_k), ("random", self.random_k), ("fastv", self.fastv_k))
                if ks}

    @property
    def needs_measurement(self) -> bool:
        return any(ks == AUTO for ks in self.kinds().values())

    def check(self) -> None:
        """Before any run: every explicit k within the grid, and FastV's layer within the language model."""
        cells, layers = grid_geometry(self.grid_model)
        for kind, ks in self.kinds().items():
            for k in [] if ks == AUTO else ks:
                if not 1 <= k <= cells:
                    raise ValueError(f"--{kind}-k {k}: k must be in [1, {cells}] (the grid model's {cells} tokens "
                                     "per image).")
        if self.fastv_k:
            layer = self.layer(layers)
            if not 1 <= layer < layers:
                raise ValueError(f"--fastv-layer {layer}: must be in [1, {layers - 1}] (the grid model's language "
                                 f"model has {layers} decoder layers).")

    def layer(self, layers: int) -> int:
        return self.fastv_layer if self.fastv_layer is not None else min(COMPARE_FASTV_LAYER, layers - 1)

    def specs(self, measured: list[dict]) -> list[RunSpec]:
        """The rows, with `auto` resolved from the `measured` rows (adaptive's and query's mean tokens per image,
        rounded, and a quarter of the grid's tokens)."""
        cells, layers = grid_geometry(self.grid_model)
        auto = matched_k(measured, cells)
        specs = []
        for kind, ks in self.kinds().items():
            for k in auto if ks == AUTO else ks:
                args = dict(self.model_args)
                if kind == "fastv":
                    args.update(fastv_layer=self.layer(layers), fastv_tokens=k)
                    specs.append(RunSpec(f"fastv-{k}", "grid", self.grid_model, args, trained=False))
                else:
                    specs.append(RunSpec(f"{kind}-{k}", f"{kind}-{k}", self.grid_model, args, trained=False))
        return specs


def matched_k(measured: list[dict], cells: int) -> list[int]:
    """The `auto` budgets: DOVE adaptive's and Q-DOVE's measured mean tokens per image (rounded, within the grid)
    and a quarter of the grid, without repeats, in that order."""
    ks = [min(cells, max(1, round(r["tokens_per_image_mean"]))) for r in measured if r["name"] in ("adaptive", "query")]
    return list(dict.fromkeys(ks + [max(1, cells // 4)]))


def grid_geometry(grid_model: str) -> tuple[int, int]:
    """`(tokens per image, decoder layers)` of a grid LLaVA folder (`dove llava-train --stage base`), read from
    its config."""
    from dove_vlm.llava.configuration_dove_llava import DoveLlavaConfig

    config = DoveLlavaConfig.from_pretrained(grid_model)
    vision = config.vision_config
    if getattr(vision, "mode", None) != "grid":
        raise ValueError(f"--grid-model {grid_model} has a {getattr(vision, 'mode', None)!r} tower; the pool, random "
                         "and FastV rows run on the grid LLaVA (`dove llava-train --stage base`).")
    return vision.dove_config.num_latent_positions, config.text_config.num_hidden_layers


__all__ = ["AUTO", "BudgetRows", "RunSpec", "grid_geometry", "matched_k", "mode_matrix", "parse_k_list"]
