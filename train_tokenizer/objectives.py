"""The training objective of one step, DOVE or Q-DOVE, as `(loss, logs)` from the model output and the batch.

`loss = rec_weight · L_rec  +  λ_eos(step) · L_eos  [+ null_distill_weight · L_distill]  [+ latent_weight · L_lat]`

- `L_rec` per row: the full-image reconstruction loss (plain rows, and queried rows decoded toward the whole
  image) or the query loss `L_qry` (in-box rows), each computed once;
- `L_eos`: the EOS-length loss of the rows decoded at their own length against a threshold: the paper's dynamic
  one (the mean L_rec of the last `threshold_window` steps, over the whole global batch; queried rows have their
  own, of in-box losses); with `length_objective="source"`, one such running mean per data source of the
  training mix (`StepBatch.sources`), so each source's images spread over the lengths by their own difficulty
  instead of the easier source taking every short code; with `length_objective="detail"`, the difficulty is
  the high-pass reconstruction error (`detail_error`: edges and texture, not palette) and a row at length m of
  n is held to the running (m / n) quantile of it (`DifficultyQuantiles`); or, with
  `query_threshold="teacher"`, the in-box loss the starting DOVE reaches on the same box (`teacher_thresholds`);
- `L_distill`: with a teacher, the null query's p_eos is held to the teacher's (`null_query_distillation`), which
  then replaces L_eos on those rows;
- `L_lat`: MSE of the predicted latents (in the boxes for in-box rows).

`logs` are `(sum, count)` pairs, reduced over the processes by `Ranks.logs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dove_vlm.data.mix import SOURCES

from .distributed import Ranks
from .draws import StepBatch
from .losses import DifficultyQuantiles, DynamicThreshold, EosWeightSchedule, detail_error, eos_loss
from .query import box_mask, query_loss


def teacher_thresholds(teacher, teacher_enc, images: torch.Tensor, boxes: list, rows: torch.Tensor, rec_loss,
                       outside_weight: float, crop_size: int, scale: float) -> torch.Tensor:
    """`(len(rows),)` the in-box loss that the frozen starting DOVE (`teacher`, whose encoding of the batch is
    `teacher_enc`) reaches on each row's boxes at its own full-image length, times `scale`: each queried row is
    held to that quality with as few tokens as it can."""
    with torch.no_grad():
        latents = teacher.decode_latents(teacher_enc.tokens[rows], teacher_enc.attention_mask[rows])
        recon = teacher.latents_to_pixels(latents).float()
        picked = [boxes[i] for i in rows.tolist()]
        return query_loss(rec_loss, recon, images[rows], picked, outside_weight, crop_size) * scale


def null_query_distillation(p_eos: torch.Tensor, teacher_p: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's p_eos against the teacher's, summed over the slots (so it weighs like
    the per-image EOS loss) and averaged over the rows."""
    return F.binary_cross_entropy(p_eos.float().clamp(1e-6, 1 - 1e-6), teacher_p, reduction="none").sum(1).mean()


class DoveObjective:
    """The step loss (see the module docstring), with its thresholds (state of the run: checkpointed) and λ_eos."""

    def __init__(self, args, rec_loss, model, teacher, ranks: Ranks):
        self.args, self.rec_loss, self.model, self.teacher, self.ranks = args, rec_loss, model, teacher, ranks
        self.threshold = DynamicThreshold(window=args.threshold_window)  # plain rows: full-image L_rec
        self.query_threshold = DynamicThreshold(window=args.threshold_window)  # queried rows: in-box L_rec only
        # length_objective="source": plain rows of each data source against their own running mean.
        self.per_source = args.length_objective == "source"
        self.source_thresholds = [DynamicThreshold(window=args.threshold_window) for _ in SOURCES]
        self._pending_sources = [float("nan")] * len(SOURCES)
        # length_objective="detail": plain rows' high-pass error against the running quantile of their length.
        self.detail = args.length_objective == "detail"
        self.detail_quantiles = DifficultyQuantiles(window=args.threshold_window)
        self._pending_detail: list[float] = []
        self.schedule = EosWeightSchedule(start=args.eos_weight_start, end=args.eos_weight_end,
                                          warmup_steps=args.eos_warmup_steps, ramp_steps=args.eos_ramp_steps)
        self.crop_size = max(32, model.config.image_size // 4)
        self.distill = teacher is not None and args.null_distill_weight > 0
        self._pending = (float("nan"), float("nan"))
        self._teacher_threshold = (0.0, 0)  # the last step's (sum, count) of teacher thresholds (logged)

    def reconstruction(self, recon: torch.Tensor, batch: StepBatch):
        """`(per-row L_rec or L_qry (B,), the full-image loss output or None)`."""
        per_sample, rec = recon.new_zeros(len(batch.forced)), None
        whole, in_box = batch.whole, batch.in_box
        if whole.any():
            rec = self.rec_loss(recon[whole], batch.images[whole])
            per_sample = per_sample.masked_scatter(whole, rec.per_sample)
        if in_box.any():
            box_loss = query_loss(self.rec_loss, recon, batch.images, batch.loss_boxes, self.args.outside_weight,
                                  self.crop_size)
            per_sample = torch.where(in_box, box_loss, per_sample)
        return per_sample, rec

    def __call__(self, out, batch: StepBatch, step: int) -> tuple[torch.Tensor, dict]:
        args, ranks = self.args, self.ranks
        per_sample, rec = self.reconstruction(out.reconstruction.float(), batch)
        queried, adaptive = batch.queried, batch.adaptive
        plain = ~queried
        detached = per_sample.detach()
        # What the EOS loss compares with a threshold: L_rec (or L_qry), or for plain rows their detail error.
        difficulty = detached
        if self.detail:
            difficulty = torch.where(queried, detached, detail_error(out.reconstruction.detach(), batch.images))
        # The thresholds see only rows decoded at their own (adaptive) length, over the whole global batch.
        batch_rec = ranks.masked_mean(difficulty, adaptive & ~queried)
        batch_query_rec = ranks.masked_mean(detached, adaptive & queried)
        self._pending = (batch_rec, batch_query_rec)
        threshold, query_threshold = self.threshold.value(batch_rec), self.query_threshold.value(batch_query_rec)
        thresholds = torch.where(queried, query_threshold,
                                 self.plain_thresholds(difficulty, batch, threshold, out.lengths))
        anchored = adaptive & queried
        teacher_enc = None
        if self.teacher is not None:
            with torch.no_grad():  # same frozen VQGAN as the student: its latents, not a second encoder pass
                teacher_enc = self.teacher.encode(batch.images, latents=out.latents.detach())
            if args.query_threshold == "teacher" and anchored.any():
                rows = anchored.nonzero().squeeze(1)
                target = thresholds.clone()
                target[rows] = teacher_thresholds(self.teacher, teacher_enc, batch.images, batch.boxes, rows,
                                                  self.rec_loss, args.outside_weight, self.crop_size,
                                                  args.query_threshold_scale)
                thresholds = target
                self._teacher_threshold = (target[rows].sum(), len(rows))
        l_eos = eos_loss(out.p_eos, out.lengths, difficulty, thresholds)
        # With a teacher, the null query's lengths come from it (the distillation below), not from the EOS loss.
        eos_rows = anchored if self.distill else adaptive
        l_eos = (l_eos * eos_rows).sum() / eos_rows.sum().clamp(min=1) * ranks.share(eos_rows.sum())
        lambda_eos = self.schedule(step)
        loss = args.rec_weight * per_sample.mean() + lambda_eos * l_eos
        if self.distill:
            share = ranks.share(plain.sum())  # a collective: every process computes it, with or without null rows
            if plain.any():
                distill = null_query_distillation(out.p_eos[plain], teacher_enc.p_eos[plain])
                loss = loss + args.null_distill_weight * distill * share
        if args.latent_weight:
            config = self.model.config
            use_mask = batch.in_box.any() or ranks.world > 1
            mask = box_mask(batch.loss_boxes, config.image_size, config.latent_size) if use_mask else None
            latent = self.model.latent_loss(out.predicted_latents, out.latents, mask)
            loss = loss + args.latent_weight * latent * (ranks.share(mask.sum()) if mask is not None else 1.0)
        lengths, whole = out.lengths.float(), batch.whole
        logs = {  # (sum, count) pairs; tensors stay on the device until they are logged
            "loss": (loss.detach(), 1), "rec": (per_sample.mean().detach(), 1),
            "mse": (rec.mse * whole.sum(), whole.sum()) if rec is not None else (0.0, 0),
            "eos": (l_eos.detach(), 1), "mean_length": (lengths[adaptive].sum(), adaptive.sum()),
            "lambda_eos": (lambda_eos, 1), "threshold": (threshold, 1),
        }
        if batch.boxes is not None:
            teacher = self.teacher is not None and args.query_threshold == "teacher"
            logs["query_threshold"] = self._teacher_threshold if teacher else (query_threshold, 1)
            logs["mean_length_queried"] = (lengths[anchored].sum(), anchored.sum())
        return loss, logs

    def plain_thresholds(self, detached: torch.Tensor, batch: StepBatch, threshold: float,
                         lengths: torch.Tensor | None = None) -> torch.Tensor | float:
        """The EOS threshold of each plain row: the shared running one, (per source) its source's, or (detail)
        the running quantile of its length (`lengths`, the rows' own)."""
        if self.detail:
            rows = batch.adaptive & ~batch.queried
            current = [v for part in self.ranks.gather(detached[rows].tolist()) for v in part]  # the global batch
            self._pending_detail = current
            return self.detail_quantiles.thresholds(current, lengths, self.model.config.max_tokens).to(detached)
        if not self.per_source or batch.sources is None:
            return threshold
        rows = batch.adaptive & ~batch.queried
        values = []
        for index, running in enumerate(self.source_thresholds):  # a collective per source, on every process
            current = self.ranks.masked_mean(detached, rows & (batch.sources == index))
            self._pending_sources[index] = current
            values.append(running.value(current))
        return torch.tensor(values, device=detached.device, dtype=detached.dtype)[batch.sources]

    def update(self) -> None:
        """After the step: this step's (global) batch losses join the running thresholds."""
        self.threshold.update(self._pending[0])
        self.query_threshold.update(self._pending[1])
        for running, value in zip(self.source_thresholds, self._pending_sources):
            running.update(value)
        self._pending_sources = [float("nan")] * len(SOURCES)
        self.detail_quantiles.update(self._pending_detail)
        self._pending_detail = []

    def state_dict(self) -> dict:
        return {"threshold": self.threshold.state_dict(), "query_threshold": self.query_threshold.state_dict(),
                "source_thresholds": [t.state_dict() for t in self.source_thresholds],
                "detail_quantiles": self.detail_quantiles.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "threshold" in state:
            self.threshold.load_state_dict(state["threshold"])
        if "query_threshold" in state:
            self.query_threshold.load_state_dict(state["query_threshold"])
        for running, saved in zip(self.source_thresholds, state.get("source_thresholds", [])):
            running.load_state_dict(saved)
        if "detail_quantiles" in state:
            self.detail_quantiles.load_state_dict(state["detail_quantiles"])
