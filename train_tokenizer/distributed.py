"""`dove train` across processes (one per device, started by `torchrun` or `accelerate launch`).

The rule: the N processes of a run compute what one process with N times the batch would. Each process takes its
slice of the same global batch (`data.batch_indices`) and the same global draws (`draws.py`); every mean over a
batch that DDP's gradient averaging would get wrong (a mean over a varying number of rows: the EOS loss over the
adaptive rows, the distillation over the null-query rows, the in-box latent loss) is rescaled with `Ranks.share`;
the dynamic EOS thresholds and every logged figure are reduced over the processes. In one process every helper
here is the identity, so a one-process run computes exactly what it did before.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

# Generator parameters that DDP must not wait for: GPT-NeoX's `embed_in` (DOVE feeds embeddings, never ids)
# and the Q-DOVE query embedding, unused in a batch whose queries are all null (its gradient is averaged by hand).
DDP_IGNORED = ("generator.embed_in.weight", "query_embed.weight")
HAND_SYNCED = ("query_embed.weight",)


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int, output_dir: Path) -> Accelerator:
    """The run's Accelerator. Under `torchrun` on a machine without CUDA it is forced to the CPU, which makes
    accelerate form a gloo process group (otherwise every process would train alone). accelerate's tensorboard
    tracker logs the losses when tensorboard is installed."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    tracker = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None
    return Accelerator(cpu=several and not torch.cuda.is_available(), mixed_precision=mixed_precision,
                       gradient_accumulation_steps=gradient_accumulation_steps, log_with=tracker,
                       project_dir=str(output_dir))


class Ranks:
    """Reductions over the processes of a run (identities in one process)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.world, self.rank = accelerator.num_processes, accelerator.process_index

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the processes (on the run's device)."""
        if self.world > 1:
            values = values.to(self.accelerator.device, copy=True)
            dist.all_reduce(values)
        return values

    def share(self, count: torch.Tensor) -> torch.Tensor | float:
        """Factor that turns this process's mean over `count` rows into its share of the global mean: with
        gradients averaged over processes, `mean_local * share` trains like the mean over all rows."""
        if self.world == 1:
            return 1.0
        local = count.detach().float().reshape(1).to(self.accelerator.device)
        return (self.world * local.clamp(min=1) / self.sum(local).clamp(min=1))[0]

    def masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of `values[mask]` over every process's rows (NaN when no process has one)."""
        if self.world == 1:
            return values[mask].mean().item() if mask.any() else float("nan")
        total, count = self.sum(torch.stack([values[mask].sum(), mask.sum().to(values.dtype)])).tolist()
        return total / count if count > 0 else float("nan")

    def logs(self, parts: dict[str, tuple]) -> dict[str, float]:
        """`{name: (sum, count)}` (numbers or tensors) → `{name: sum / count}` over every process, in one
        all-reduce; NaN where the count is 0."""
        device = self.accelerator.device
        pairs = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device).reshape(())
                             for pair in parts.values() for v in pair]).reshape(-1, 2)
        pairs = self.sum(pairs).cpu().tolist()
        return {name: (s / c if c > 0 else float("nan")) for name, (s, c) in zip(parts, pairs)}

    def broadcast(self, value):
        """The main process's `value` on every process (any picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's `value`, in rank order (any picklable object)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def exclude_from_ddp(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Tell DDP to skip the parameters that are not used at every step (`DDP_IGNORED`); returns those among them
    that train and whose gradients `average_gradients` must then average by hand."""
    names = dict(model.named_parameters())
    ignored = [name for name in DDP_IGNORED if name in names]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return [names[name] for name in HAND_SYNCED if name in names and names[name].requires_grad]


def average_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """DDP's gradient averaging for `params` it was told to skip: a parameter with a gradient on some process
    gets the mean over all (zero where a process had none); one without a gradient anywhere keeps none (so the
    optimiser skips it, as it would in one process)."""
    if ranks.world == 1 or not params:
        return
    device = params[0].device
    present = ranks.sum(torch.tensor([float(p.grad is not None) for p in params], device=device))
    for param, count in zip(params, present.tolist()):
        if count == 0:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(ranks.world)


def check_process_count(state: dict, world: int, checkpoint) -> None:
    """A run resumes under the number of processes that wrote its checkpoint (the batch slices, the draws and
    the stream positions depend on it)."""
    saved = int(state.get("num_processes", 1))
    if saved != world:
        raise ValueError(f"the checkpoint {checkpoint} was written by a run of {saved} process(es) and this run has "
                         f"{world}: resume with the same number (e.g. `torchrun --nproc_per_node {saved} -m dove_vlm "
                         "train ... --resume`), or start a new --output-dir.")
