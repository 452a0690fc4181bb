"""FastV-style visual token pruning inside the language model (training-free).

After the first `layer` decoder layers have seen every token, only the `tokens` visual tokens of each image that
receive the most attention from the last prompt token stay visible: the later layers attend to them and to the
text, never to the pruned ones (FastV, Chen et al. 2024). The scores are the attention probabilities of the last
token over the prompt in decoder layer `layer - 1` (0-based), averaged over heads, computed here from that
layer's own `q_proj` / `k_proj` and rotary embedding (so any attention implementation works, sdpa included).

It is built from forward hooks on the transformers model, nothing patched:
- a pre-hook on the LLaVA model records which prompt positions hold image features (`input_ids == <image>`) and
  the padding of each prefill call;
- a pre-hook on layer `layer - 1`'s attention scores the visual tokens (prefill only) and picks the pruned ones;
- a pre-hook on every later decoder layer masks the pruned key positions out of its attention mask, in the
  prefill and in every generation step after it (they stay in the cache, never attended).
Kept tokens keep their positions (as FastV does). A pruned token is masked rather than cut out of the sequence,
so the answers are those of the pruned prompt while the later layers still compute its (unused) hidden state:
the latency of a FastV row is not FastV's speed-up. With `tokens` >= an image's count nothing is pruned and the
answers equal the unpruned model's exactly.
"""

from __future__ import annotations

import sys

import torch


class FastVError(ValueError):
    """FastV options out of range (the message names the bad value and the valid ones)."""


class FastV:
    """The hooks on one model; `remove()` takes them off. Use [`apply_fastv`]."""

    def __init__(self, model, layer: int, tokens: int):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner = base.model
        layers = inner.language_model.layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < len(layers):
            raise FastVError(f"fastv_layer={layer!r}: the layer after which visual tokens are pruned must be in "
                             f"[1, {len(layers) - 1}] (this language model has {len(layers)} decoder layers).")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise FastVError(f"fastv_tokens={tokens!r}: the visual tokens kept per image must be a whole number >= 1.")
        self.layer, self.tokens = layer, tokens
        self.image_token_id = inner.config.image_token_id
        self.visual: torch.Tensor | None = None  # (B, T) image positions of the current prompt
        self.padding: torch.Tensor | None = None  # (B, T) True on left padding
        self.pruned: torch.Tensor | None = None  # (B, T) pruned positions of the current prompt
        self.handles = [inner.register_forward_pre_hook(self._record_prompt, with_kwargs=True),
                        layers[layer - 1].self_attn.register_forward_pre_hook(self._score, with_kwargs=True)]
        self.handles += [layers[i].register_forward_pre_hook(self._mask, with_kwargs=True)
                         for i in range(layer, len(layers))]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def kept(self, count: int) -> int:
        """Visual tokens the later layers see of an image with `count` of them."""
        return min(count, self.tokens)

    # hooks --------------------------------------------------------------------------------------------------
    def _record_prompt(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or input_ids.shape[1] == 1:
            return None  # a generation step: the prompt's pruning stays
        self.visual = input_ids == self.image_token_id
        mask = kwargs.get("attention_mask")
        self.padding = (mask == 0) if mask is not None and mask.dim() == 2 else torch.zeros_like(self.visual)
        self.pruned = None
        return None

    def _score(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if self.visual is None or hidden.shape[1] != self.visual.shape[1]:
            return None  # not this prompt's prefill
        if not bool((self.visual.sum(1) > self.tokens).any()):
            self.pruned = None
            return None
        batch, length, _ = hidden.shape
        head_dim = module.head_dim
        query = module.q_proj(hidden[:, -1:]).view(batch, 1, -1, head_dim).transpose(1, 2)
        key = module.k_proj(hidden).view(batch, length, -1, head_dim).transpose(1, 2)
        cos, sin = kwargs["position_embeddings"]
        rotate = sys.modules[type(module).__module__].apply_rotary_pos_emb
        query, _ = rotate(query, query, cos[:, -1:], sin[:, -1:])
        _, key = rotate(key, key, cos, sin)
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # grouped-query attention
        logits = (query.float() @ key.float().transpose(-1, -2)).squeeze(2) * module.scaling  # (B, heads, T)
        logits = logits.masked_fill(self.padding.to(logits.device).unsqueeze(1), float("-inf"))
        scores = logits.softmax(-1).mean(1)  # (B, T): attention of the last token, averaged over heads
        visual = self.visual.to(scores.device)
        pruned = torch.zeros_like(visual)
        for i in range(batch):
            positions = visual[i].nonzero().squeeze(1)
            if len(positions) > self.tokens:
                keep = positions[scores[i, positions].topk(self.tokens).indices]
                pruned[i, positions] = True
                pruned[i, keep] = False
        self.pruned = pruned
        return None

    def _mask(self, module, args, kwargs):
        if self.pruned is None:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        prompt = self.pruned.shape[1]
        queries = hidden.shape[1]
        if mask is None:  # no padding, plain causal attention: build the mask it stands for
            keys = self._key_length(module, kwargs, queries)
            offset = keys - queries
            mask = torch.ones(queries, keys, dtype=torch.bool, device=hidden.device).tril(offset)
            mask = mask.expand(hidden.shape[0], 1, queries, keys).clone()
        else:
            mask = mask.expand(hidden.shape[0], -1, -1, -1).clone()
        pruned = self.pruned.to(mask.device)[:, None, None, :]
        if mask.dtype == torch.bool:
            mask[..., :prompt] &= ~pruned
        else:
            mask[..., :prompt] = mask[..., :prompt].masked_fill(pruned, torch.finfo(mask.dtype).min)
        kwargs["attention_mask"] = mask
        return args, kwargs

    @staticmethod
    def _key_length(layer, kwargs, queries: int) -> int:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None:
            return queries
        return int(cache.get_seq_length(layer.self_attn.layer_idx)) + queries


def apply_fastv(model, layer: int | str, tokens: int | str) -> FastV:
    """Prune each image's visual tokens to `tokens` after decoder layer `layer` of `model`'s language model
    (a `DoveLlavaForConditionalGeneration`, peft-wrapped or not); returns the [`FastV`] hooks (`.remove()`)."""
    return FastV(model, _whole(layer, "fastv_layer"), _whole(tokens, "fastv_tokens"))


def _whole(value, name: str):
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise FastVError(f"{name}={value!r} is not a whole number.")
        return int(text)
    return value


__all__ = ["FastV", "FastVError", "apply_fastv"]
