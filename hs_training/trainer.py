"""The training loop shared by every task: DDP, mixed precision, EMA, LR schedule, resumable checkpoints,
progress bar, loss log and plot, sample grids and export (see :mod:`hs_training.task`)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hs_models.log import logger

from . import checkpoint as ckpt
from .config import LR_SCHEDULES, PRECISIONS, ConfigError, TrainConfig, to_jsonable
from .distributed import DistributedContext, ResumableDistributedSampler, barrier, mean_over_processes
from .logs import LossLog, plot_losses, save_image
from .task import Task

LAST = "last.pt"


class EMA:
    """Exponential moving average of parameters, as LDM's LitEma: decay ``min(decay, (1+n)/(10+n))`` after n
    updates, ``shadow -= (1 - decay) · (shadow - param)`` (method.md §8.3)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.names = [name for name, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {name: params[name].detach().clone().float() for name in self.names}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = dict(module.named_parameters())
        for name in self.names:
            shadow = self.shadow[name]
            shadow.sub_((1.0 - decay) * (shadow - params[name].detach().float()))

    def averaged_copy(self, module: nn.Module) -> nn.Module:
        """A copy of ``module`` holding the averaged weights (for sampling and export)."""
        twin = copy.deepcopy(module)
        params = dict(twin.named_parameters())
        with torch.no_grad():
            for name in self.names:
                params[name].copy_(self.shadow[name])
        return twin.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["shadow"]) != sorted(self.shadow):
            raise ValueError("the EMA parameters of the checkpoint differ from the model's")
        self.num_updates = int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier at ``step``: linear warm-up, then constant, cosine or linear decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class _StopRequest:
    """SIGTERM (cluster pre-emption) or SIGINT between steps: finish the step, write a checkpoint, stop."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested: finishing this step and writing a checkpoint (signal again to abort)")

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def agreed(self, context: DistributedContext) -> bool:
        if not context.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=context.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Trainer:
    def __init__(self, task: Task, train: TrainConfig, context: DistributedContext, options_json: dict[str, Any]):
        self.task, self.train, self.context = task, train, context
        self.run_dir = Path(train.out)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.options_json = options_json
        self._check_settings()

    def _check_settings(self) -> None:
        t = self.train
        if t.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {t.precision!r}")
        if t.precision == "fp16" and self.context.device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA GPU (its gradient scaler is CUDA-only); use fp32 or bf16")
        if t.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {t.lr_schedule!r}")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(t, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(t, name)}")
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {t.ema_decay}")

    # ------------------------------------------------------------------------------------------------
    def _autocast(self):
        t, device = self.train, self.context.device
        if t.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if t.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _to_device(self, batch: Any) -> Any:
        device, channels_last = self.context.device, self.train.channels_last
        if isinstance(batch, torch.Tensor):
            batch = batch.to(device, non_blocking=True)
            if channels_last and batch.ndim == 4 and batch.is_floating_point():
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    def _sampler(self, dataset) -> ResumableDistributedSampler:
        train, context = self.train, self.context
        if train.batch_size % context.world_size:
            raise ConfigError(
                f"batch_size {train.batch_size} is the global batch and must divide evenly over the "
                f"{context.world_size} processes; choose a multiple of {context.world_size}"
            )
        if len(dataset) < train.batch_size:
            where = f" in {train.data!r}" if train.data else ""
            raise ConfigError(
                f"the dataset{where} has {len(dataset)} usable samples, fewer than one batch of {train.batch_size}; "
                f"lower --batch-size or add data"
            )
        return ResumableDistributedSampler(len(dataset), train.batch_size, context.rank, context.world_size, train.seed)

    def _resume_path(self) -> Path | None:
        resume = self.train.resume
        if resume == "never":
            return None
        if resume == "auto":
            last = self.checkpoint_dir / LAST
            return last if last.exists() else None
        return Path(resume)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``steps`` (or ``stop_after`` more steps); returns a summary (step reached, last loss, files)."""
        task, train, context = self.task, self.train, self.context
        main = context.is_main
        torch.manual_seed(train.seed)  # identical initial weights in every process
        architecture = task.architecture()
        resume_path = self._resume_path()
        state = None
        if resume_path is not None:
            state = ckpt.load_checkpoint(resume_path)
            ckpt.check_compatible(state, resume_path, task.name, architecture)

        dataset = task.build_dataset()  # before the model: a bad dataset folder fails fast
        sampler = self._sampler(dataset)
        self.steps_per_epoch = sampler.steps_per_epoch
        model = task.build_model().to(context.device)
        if train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ema_target = task.ema_module(model) or model
        ema = EMA(ema_target, train.ema_decay) if train.ema_decay > 0 else None
        optimizer = torch.optim.AdamW(
            task.parameter_groups(model),
            lr=train.lr,
            betas=tuple(train.betas),
            eps=train.adam_eps,
            weight_decay=train.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, train.warmup_steps, train.steps, train.lr_schedule)
        )
        scaler = torch.amp.GradScaler(context.device.type, enabled=train.precision == "fp16")
        step = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                if state.get("ema") is None:
                    raise ckpt.ResumeError(
                        f"{str(resume_path)!r} was trained without EMA but ema_decay is {train.ema_decay} now; "
                        f"resume with --ema-decay 0 or start a new run"
                    )
                ema.load_state_dict(state["ema"])
            states = state["rng"]
            ckpt.set_rng_state(states[context.rank] if len(states) == context.world_size else states[0])
            step = int(state["step"])
            if main:
                logger.info("resumed from %s at step %d", resume_path, step)
        ddp = (
            DistributedDataParallel(model, device_ids=[context.local_rank] if context.device.type == "cuda" else None)
            if context.distributed
            else model
        )
        log = LossLog(self.run_dir / "loss.jsonl")
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            settings = {"task": task.name, "world_size": context.world_size, **to_jsonable(train), **self.options_json}
            ckpt.atomic_write(self.run_dir / "config.json", lambda f: f.write(json.dumps(settings, indent=2).encode()))
            log.truncate_after(step)
            logger.info("%s: %s; %d samples, %d steps per epoch", task.name, task.summary(model), len(dataset),
                        sampler.steps_per_epoch)  # fmt: skip
        barrier(context)

        target = train.steps if train.stop_after <= 0 else min(train.steps, step + train.stop_after)
        progress = None
        if main and train.progress:
            from tqdm import tqdm

            progress = tqdm(total=train.steps, initial=step, desc=task.name, dynamic_ncols=True)
        loader_kwargs: dict[str, Any] = {"num_workers": train.num_workers, "pin_memory": context.device.type == "cuda"}
        last_stats: dict[str, float] = {}
        started = time.perf_counter()
        stopped = False
        with _StopRequest() as stop:
            while step < target and not stopped:
                epoch, position = divmod(step, sampler.steps_per_epoch)
                sampler.set_position(epoch, position)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=sampler.local_batch, sampler=sampler, **loader_kwargs
                )
                for batch in loader:
                    stats = self._step(ddp, model, ema_target, ema, optimizer, scheduler, scaler, batch)
                    step += 1
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{stats['loss']:.4f}")
                    if step % train.log_every == 0 or step == target:
                        last_stats = mean_over_processes(stats, context)
                        if main:
                            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **last_stats}
                            record["time"] = round(time.perf_counter() - started, 3)
                            log.append(record)
                    stop_now = stop.agreed(context)
                    finished = step >= target or stop_now
                    if main and (finished or (train.sample_every and step % train.sample_every == 0)):
                        self._sample(model, ema_target, ema, step)
                    if finished or (train.checkpoint_every and step % train.checkpoint_every == 0):
                        self._checkpoint(model, ema_target, ema, optimizer, scheduler, scaler, step, log)
                    if finished:
                        stopped = stop_now
                        break
        if progress is not None:
            progress.close()
        barrier(context)
        return {
            "step": step,
            "stats": last_stats,
            "run_dir": str(self.run_dir),
            "export": str(self.run_dir / task.export_name),
            "interrupted": stopped,
        }

    def _step(self, ddp, model, ema_target, ema, optimizer, scheduler, scaler, batch) -> dict[str, float]:
        batch = self._to_device(batch)
        with self._autocast():
            loss, stats = ddp(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at learning rate {scheduler.get_last_lr()[0]:.3g}; lower --lr, "
                f"add --grad-clip 1.0 or use --precision bf16/fp32 instead of fp16, and resume from the last checkpoint"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(ema_target)
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}}

    def _ema_copy(self, ema_target, ema) -> nn.Module | None:
        return ema.averaged_copy(ema_target) if ema is not None else None

    def _sample(self, model, ema_target, ema, step: int) -> None:
        model.eval()
        try:
            with torch.no_grad(), self._autocast():
                grid = self.task.sample_grid(model, self._ema_copy(ema_target, ema), step)
        finally:
            model.train()
        if grid is not None:
            save_image(grid, self.run_dir / "samples" / f"step_{step:07d}.png")

    def _checkpoint(self, model, ema_target, ema, optimizer, scheduler, scaler, step, log: LossLog) -> None:
        context = self.context
        rng = ckpt.rng_state()
        if context.distributed:
            states: list[Any] = [None] * context.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if context.is_main:
            epoch, position = divmod(step, self.steps_per_epoch)
            state = {
                "format": ckpt.FORMAT,
                "version": ckpt.VERSION,
                "task": self.task.name,
                "architecture": json.dumps(self.task.architecture(), sort_keys=True),
                "step": step,
                "epoch": epoch,
                "step_in_epoch": position,
                "world_size": context.world_size,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": states,
            }
            numbered = self.checkpoint_dir / f"step_{step:07d}.pt"
            ckpt.atomic_save(state, numbered)
            ckpt.atomic_link(numbered, self.checkpoint_dir / LAST)
            kept = sorted(self.checkpoint_dir.glob("step_*.pt"))
            for old in kept[: max(0, len(kept) - max(1, self.train.keep_checkpoints))]:
                old.unlink(missing_ok=True)
            self.task.export(model, self._ema_copy(ema_target, ema), self.run_dir / self.task.export_name)
            plot_losses(log.read(), self.run_dir / "loss.png", f"{self.task.name}: {self.run_dir.name}")
        barrier(context)
