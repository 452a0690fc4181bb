"""The lmms-eval model adapter for DOVE-LLaVA (`lmms-eval --model dove_llava --model_args pretrained=DIR,...`).

`pretrained` is a folder written by `dove llava-train` (`--stage base`: a full model; `--stage lora`: base + LoRA
adapter + tower) or any `DoveLlavaForConditionalGeneration` folder with its tokenizer. `tower_mode` (and any other
tower setting by name, parsed by `dove_vlm.TowerSettings`) re-runs the model's own DOVE weights in another mode:

    grid        all VQGAN latents (the fixed-length baseline; needs a model trained on the grid tower)
    pool-K      the grid average-pooled to K cells (training-free, on the grid model)
    random-K    K grid cells drawn per image, in raster order (training-free, on the grid model)
    fixed-K     DOVE truncated to K tokens (also `tower_mode=fixed,num_tokens=K`)
    adaptive    DOVE's own length
    query       Q-DOVE with the question as its query
    query-null  Q-DOVE with a null query (the whole image)
    encoder     a pretrained fixed-length encoder tower (`dove llava-train --tower efficientnet-lite0`)

`fastv_layer=K,fastv_tokens=k` prunes each image to its k most attended visual tokens after language-model layer
K (FastV, `dove_vlm.llava.fastv`; training-free); the token accounting then counts the k kept tokens.

Token accounting goes through lmms-eval's own channels, so it lands in its results file next to accuracy:
every request returns a `GenerationResult` whose `TokenCounts` hold the prompt length (text + image tokens) and the
answer length (per sample, in the samples log and `efficiency`), and every sample is logged with
`gen_metrics.log_metrics` (`throughput.avg_latency` = seconds per sample, `throughput.avg_image_tokens` and
`avg_image_tokens_sq` give the mean and std of tokens per image).

Data parallel: under lmms-eval's multi-process launch (`accelerate launch --num_processes N -m lmms_eval ...`, or
`torchrun --nproc_per_node N -m lmms_eval ...`; gloo on a CPU), the adapter joins the process group through
accelerate, each process loads the model on its own device and answers its share of the requests (lmms-eval
hands every rank its documents and gathers the logged samples and metrics on rank 0), so the merged results are
one process's.
"""

from __future__ import annotations

import os
import time

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics

from dove_vlm.llava.saved import load_dove_llava
from dove_vlm.tower_settings import TowerSettings
from dove_vlm.vision_tower import DoveVisionTower

def set_tower_settings(model, processor, settings: TowerSettings | str | dict | None) -> DoveVisionTower:
    """Run the model's DOVE weights with `settings` over the saved tower's (`tower.with_settings`: a new tower
    around the same `DoveModel`, attached to the model and the processor). Refuses settings whose feature width
    differs from the trained projector's (e.g. grid on a model trained on DOVE tokens): the projector would be
    random."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.model.vision_tower
    new = tower.with_settings(TowerSettings.parse(settings))
    if new is tower:
        return tower
    if new.hidden_size != tower.hidden_size:
        raise ValueError(f"tower_mode={new.settings.to_string()!r} gives {new.hidden_size}-wide features but this model's "
                         f"projector was trained on {tower.hidden_size}-wide {tower.config.mode!r} features; evaluate "
                         "it with a model trained on that tower (grid: the `--stage base` folder).")
    base.set_vision_tower(new)
    processor.attach_tower(new)
    return new


def load_for_inference(pretrained: str, settings: TowerSettings | str | dict | None = None,
                       batch_invariant: bool | str | None = None, merge_lora: bool | str = True,
                       base_model: str | None = None, merged: bool | str = False,
                       fastv_layer: int | str | None = None, fastv_tokens: int | str | None = None):
    """`(model, processor, tower)` of a model folder set up for evaluation: the tower with `settings` (see
    `set_tower_settings`), `DoveConfig.batch_invariant` set when given, a LoRA adapter merged into the weights unless
    `merge_lora` is false, and with `fastv_layer` and `fastv_tokens` FastV pruning hooked into the language model
    (`model.fastv` holds the hooks; `None` without). The adapter and `dove eval compare --reference-eval` load
    models through here."""
    model, processor = load_dove_llava(pretrained, base_model=base_model, merged=_flag(merged, "merged") or False)
    tower = set_tower_settings(model, processor, settings)
    invariant = _flag(batch_invariant, "batch_invariant")
    if invariant is not None and hasattr(tower, "dove"):
        tower.dove.config.batch_invariant = invariant
    if _flag(merge_lora, "merge_lora") is not False and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.fastv = None
    if (fastv_layer is None) != (fastv_tokens is None):
        raise ValueError("FastV needs both fastv_layer=K (the decoder layer after which visual tokens are pruned) "
                         "and fastv_tokens=k (the visual tokens kept per image).")
    if fastv_layer is not None:
        from dove_vlm.llava.fastv import apply_fastv

        model.fastv = apply_fastv(model, fastv_layer, fastv_tokens)
    return model.eval(), processor, tower


def _flag(value, name: str) -> bool | None:
    """A boolean `--model_args` value (`true`/`false`, any case; `None`/"" keep the default)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "none"):
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; write {name}=true or {name}=false.")


class DoveLlava(lmms):
    """lmms-eval adapter: greedy `generate_until` for a DOVE-LLaVA model in one tower mode.

    Inference path: the tower runs once per image, `batch_size` images at a time in request order; the language
    model then answers in batches of `batch_size` prompts sorted by length (image + text tokens) within windows of
    `bucket_window` batches, so a batch is padded to prompts of similar length; answers come back in request order.

    Args:
        pretrained: the model folder (see the module docstring).
        tower_mode: grid | fixed-K | adaptive | query | query-null; default: the tower's saved mode.
        num_tokens: K for `tower_mode=fixed`. Every other tower setting (`min_tokens`, `eos_threshold`, ...; see
            `TowerSettings`) is accepted by name too.
        batch_size: images per tower call and prompts per `generate` call (left padding: answers do not depend on
            it).
        max_new_tokens: answer length limit when the task does not set one.
        base_model / merged: passed to `load_llava_lora` for LoRA folders.
        batch_invariant: `DoveConfig.batch_invariant` of the tower (`false`: one batched VQGAN call and one padded
            Q-DOVE call per batch, faster on CPU, last-bit differences across batch sizes); default: the model's.
        merge_lora: merge a LoRA adapter into the language model's weights after loading (default `true`: the same
            function without the adapter's extra matmuls at every layer; `false` runs peft's unmerged layers).
        bucket_window: batches per length-sorting window (default 8; 1 keeps the request order).
        fastv_layer / fastv_tokens: FastV pruning in the language model (both or neither; see `load_for_inference`).
        device: torch device (CPU by default).
    """

    def __init__(self, pretrained: str, tower_mode: str | None = None, num_tokens: int | None = None,
                 batch_size: int | str = 16, max_new_tokens: int = 4, base_model: str | None = None,
                 merged: bool | str = False, batch_invariant: bool | str | None = None, merge_lora: bool | str = True,
                 bucket_window: int | str = 8, fastv_layer: int | str | None = None,
                 fastv_tokens: int | str | None = None, device: str | None = None, **kwargs) -> None:
        super().__init__()
        settings = TowerSettings.parse({"tower_mode": tower_mode, "num_tokens": num_tokens,
                                        **{k: kwargs.pop(k) for k in TowerSettings.names() if k in kwargs}})
        self.batch_size_per_gpu = max(1, int(batch_size)) if str(batch_size).isdigit() else 16
        self.max_new_tokens = int(max_new_tokens)
        self.bucket_window = max(1, int(bucket_window))
        model, processor, self.tower = load_for_inference(pretrained, settings, batch_invariant, merge_lora,
                                                          base_model=base_model, merged=merged,
                                                          fastv_layer=fastv_layer, fastv_tokens=fastv_tokens)
        self.fastv = model.fastv
        self.use_queries = self.tower.supports_queries
        wants_cuda = bool(device) and str(device).startswith("cuda")
        self.device = torch.device(device if device and (not wants_cuda or torch.cuda.is_available()) else "cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # lmms-eval's data-parallel launch: one share per process
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            self.device = self.accelerator.device
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.tower_mode = tower_mode or self.tower.config.mode

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @torch.no_grad()
    def _encode_images(self, images: list, queries: list):
        """Projected features (one `(L_i, hidden)` tensor per image) of one tower call."""
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(self.device)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_image_features(
            pixel_values=pixel_values, image_queries=queries if self.use_queries else None)

    @torch.no_grad()
    def _answer(self, images: list, questions: list[str], queries: list, features: list, max_new_tokens: int):
        """Greedy answers, prompt lengths and answer lengths of one `generate` call on precomputed features: the
        processor expands each `<image>` to its image's count (`image_lengths`) and `generate` gets the features as
        `mm_encoder_outputs` (the same answers as passing pixels, without a second tower pass)."""
        from dove_vlm.llava.modeling_dove_llava import DoveImageFeaturesOutput
        from dove_vlm.llava.vqa import build_prompt

        lengths = [int(f.shape[0]) for f in features]
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = self.processor(images=images, text=[build_prompt(self.processor, q) for q in questions],
                                    image_queries=queries, image_lengths=lengths, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        input_ids, attention_mask = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        image = DoveImageFeaturesOutput(pooler_output=list(features), lengths=torch.tensor(lengths))
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     mm_encoder_outputs={"image": image}, max_new_tokens=max_new_tokens,
                                     do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, input_ids.shape[1]:]
        texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        out_lens = (new_tokens != tokenizer.pad_token_id).sum(1).tolist()
        return texts, attention_mask.sum(1).tolist(), out_lens

    def _generate(self, images: list, questions: list[str], max_new_tokens: int, timings: dict | None = None):
        """Answers of any number of requests: `(texts, image-token counts, prompt lengths, answer lengths, seconds
        per request)`, in request order. The tower runs once per image (`batch_size` at a time, in order); the
        language model runs on batches sorted by prompt length within windows of `bucket_window` batches. A
        request's seconds are its share of its tower call plus its share of its `generate` call. `timings`, when
        given, gets the seconds of all tower calls (`"tower"`) and all `generate` calls (`"language_model"`) added
        to it: where the time goes."""
        n, size = len(images), self.batch_size
        queries = list(questions) if self.use_queries else [None] * n
        texts, in_lens, out_lens, seconds = [None] * n, [0] * n, [0] * n, [0.0] * n
        lengths, seen = [0] * n, [0] * n
        window = size * self.bucket_window
        for first in range(0, n, window):
            rows = range(first, min(n, first + window))
            features = {}
            for start in range(rows.start, rows.stop, size):
                chunk = range(start, min(rows.stop, start + size))
                started = time.perf_counter()
                out = self._encode_images([images[i] for i in chunk], [queries[i] for i in chunk])
                elapsed = time.perf_counter() - started
                share = elapsed / len(chunk)
                if timings is not None:
                    timings["tower"] = timings.get("tower", 0.0) + elapsed
                for i, f in zip(chunk, out.pooler_output):
                    features[i], lengths[i], seconds[i] = f, int(f.shape[0]), share
            for i in rows:  # the image tokens the language model attends to (FastV: the kept ones)
                seen[i] = self.fastv.kept(lengths[i]) if self.fastv else lengths[i]
            order = sorted(rows, key=lambda i: (lengths[i], len(questions[i]), i)) if self.bucket_window > 1 \
                else list(rows)
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                started = time.perf_counter()
                answers, prompt_lens, answer_lens = self._answer(
                    [images[i] for i in batch], [questions[i] for i in batch], [queries[i] for i in batch],
                    [features[i] for i in batch], max_new_tokens)
                elapsed = time.perf_counter() - started
                share = elapsed / len(batch)
                if timings is not None:
                    timings["language_model"] = timings.get("language_model", 0.0) + elapsed
                for i, text, n_in, n_out in zip(batch, answers, prompt_lens, answer_lens):
                    texts[i], in_lens[i], out_lens[i] = text, int(n_in) - lengths[i] + seen[i], int(n_out)
                    seconds[i] += share
        return texts, seen, in_lens, out_lens, seconds

    def generate_until(self, requests) -> list[GenerationResult]:
        images, questions, until, max_new = [], [], [], []
        padding = [bool((getattr(req, "metadata", None) or {}).get("__padding_only__")) for req in requests]
        if self.world_size > 1:
            from loguru import logger

            logger.info(f"dove_llava: rank {self.rank} of {self.world_size} answers {len(requests) - sum(padding)} "
                        f"requests (+{sum(padding)} padding)")
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            if len(visuals) != 1:
                raise ValueError(f"dove_llava takes exactly one image per question; doc {doc_id} of {task} has "
                                 f"{len(visuals)}.")
            images.append(visuals[0].convert("RGB") if hasattr(visuals[0], "convert") else visuals[0])
            questions.append(context)
            stops = (gen_kwargs or {}).get("until") or []
            until.append([stops] if isinstance(stops, str) else list(stops))
            max_new.append(int((gen_kwargs or {}).get("max_new_tokens", self.max_new_tokens)))
        results: list[GenerationResult | None] = [None] * len(requests)
        for limit in sorted(set(max_new)):  # one answer-length limit per generate call
            rows = [i for i, m in enumerate(max_new) if m == limit]
            texts, lengths, in_lens, out_lens, seconds = self._generate(
                [images[i] for i in rows], [questions[i] for i in rows], limit)
            for i, text, n_img, n_in, n_out, sec in zip(rows, texts, lengths, in_lens, out_lens, seconds):
                for stop in until[i]:
                    if stop:
                        text = text.split(stop)[0]
                if not padding[i]:  # lmms-eval's padding requests (even shares across ranks) are not scored
                    log_metrics(total_elapsed_time=sec, total_gen_tokens=int(n_out),
                                avg_speed=n_out / sec if sec > 0 else 0.0,
                                additional_metrics={"total_requests": 1, "image_tokens": n_img,
                                                    "image_tokens_sq": n_img * n_img})
                results[i] = GenerationResult(text=text.strip(), token_counts=TokenCounts(
                    input_tokens=int(n_in), output_tokens=int(n_out)))
        return results

    def clean(self):
        """After the last request (every rank): rank 0 gathers every rank's per-request token and latency records,
        so the results file's `throughput` covers all requests, as one process's does."""
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            from lmms_eval.models.model_utils import gen_metrics

            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, gen_metrics.get_logged_metrics_history())
            if self.rank == 0:
                gen_metrics.reset_logged_metrics()
                for part in gathered:
                    gen_metrics._THROUGHPUT_METRICS_HISTORY.extend(part)
        super().clean()

    def loglikelihood(self, requests):
        raise NotImplementedError("dove_llava answers generate_until tasks only (VQA-style generation).")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("dove_llava answers generate_until tasks only (one question per image).")
