"""The training machinery that ``train-teacher`` and ``train-student`` share.

**Determinism.** Nothing depends on a global random state. The sample order of epoch ``e`` is a
permutation drawn from a generator seeded with ``(seed, e)``; the augmentation of sample ``i`` at
step ``t`` from one seeded with ``(seed, t, i)``; the model's initial weights from
``torch.manual_seed(seed)``. A checkpoint therefore only has to hold the model, the optimizer and
the step: a run resumed from it computes exactly what the uninterrupted run computes (bit for bit
on the CPU with a fixed thread count; GPU kernels are not all deterministic).

**Checkpoints.** Every ``checkpoint_every`` steps rank 0 writes ``<dir>/step-<n>/`` atomically (the
directory appears complete or not at all): ``model.safetensors`` (the state dict),
``optimizer.safetensors`` (the optimizer's per-parameter tensors, keyed ``<param index>.<name>``)
and ``state.json`` (step, epoch, loss history, elapsed time, the optimizer's non-tensor state and
a fingerprint of the settings). No pickle. The newest two are kept. ``resume`` continues from the
newest and refuses one written with different settings.

**Data parallel.** Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this loop with the
same *global* batch of ``batch`` samples per step and takes its contiguous shard of it
(``numpy.array_split``): N processes with B/N samples each compute the step that one process with
B samples computes. Three things make that hold: BatchNorm is synchronised (statistics over the
global batch; torch's ``SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm` on the CPU, where torch
has none); each process scales its loss to its share of the global-batch loss (see
:meth:`Distributed.share`), so DDP's gradient average is the global-batch gradient; and the
augmentation is seeded per sample, not per process. What remains is the order of float
summations (per-shard sums then an all-reduce instead of one sum). In float64 the gradients of
one step agree to ~1e-13 relative (the test's check, tolerance 1e-9). In float32 they differ by
rounding noise of the same size as between 1 and 2 threads of a single process (up to ~1e-2 for
a few early BatchNorm-bias gradients that are sums with heavy cancellation, ~1e-5 typically), and
Adam turns near-zero gradient entries into ±lr steps, so fp32 weights after several Adam steps
are not bitwise equal to the single-process run — they are an equally valid sample of the same
computation (losses agree to ~1e-4). Gloo on the CPU, NCCL on CUDA; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cosme_ros import atomic
from cosme_ros.distributed import Distributed, all_reduce_sum
from cosme_ros.errors import CosmeError

CHECKPOINT_FORMAT = "cosme-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ----------------------------------------------------------------------------- seeding


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch: a permutation of ``range(n)`` seeded with (seed, epoch)."""
    return np.random.default_rng([int(seed), 1, int(epoch)]).permutation(n)


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator for augmenting dataset sample ``index`` at global ``step``."""
    return np.random.default_rng([int(seed), 2, int(step), int(index)])


def lr_at(step: int, total: int, base: float, warmup: int = 0, power: float = 0.9) -> float:
    """Linear warm-up over ``warmup`` steps, then DeepLab's poly decay
    ``base · (1 − t/T)^power`` to zero at the last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return base * max(0.0, 1.0 - (step - warmup) / span) ** power


def default_warmup(total_steps: int) -> int:
    """5 % of the run, at most 200 steps: enough for BatchNorm statistics to settle from scratch."""
    return min(200, total_steps // 20)


# ----------------------------------------------------------------------------- distribution


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm2d whose training statistics span every process's shard of the batch.

    torch's ``SyncBatchNorm`` only runs on GPUs. Same parameters, buffers and running-statistics
    update as ``BatchNorm2d`` (biased variance to normalise, unbiased in ``running_var``); the
    mean is reduced first and the variance from it (two passes, as BatchNorm does) so it stays
    accurate where the mean is large. Eval mode is plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), x.new_full((1,), x.numel() // c)])
        total = all_reduce_sum(local)
        n = total[c].detach()
        mean = total[:c] / n
        d = x - mean.view(1, c, 1, 1)
        var = all_reduce_sum(d.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(
                    var.detach() * (n / (n - 1).clamp(min=1)), alpha=m
                )
        y = d * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d → its synchronised version, sharing parameters and buffers (so state-dict
    keys are unchanged)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d):
        new = CpuSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module


def setup_threads(threads: Optional[int]) -> int:
    """Use ``threads`` intra-op threads (default: torch's, which honours OMP_NUM_THREADS)."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- data


class PreparedSamples:
    """``dataset[i]`` → ``(image, label or None)`` after a deterministic ``prepare`` step,
    memoised while the cached arrays fit in ``budget_bytes``.

    ``prepare`` must be a pure function of the sample (e.g. :func:`augment.shrink_for_training`),
    so whether an item came from the cache never changes a result.
    """

    def __init__(
        self,
        dataset,
        prepare: Callable[[np.ndarray, Optional[np.ndarray]], Tuple],
        labels: bool,
        budget_bytes: int = 2 << 30,
    ) -> None:
        self.dataset, self.prepare, self.labels = dataset, prepare, labels
        self.budget = budget_bytes
        self.used = 0
        self._cache: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        i = int(i)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        sample = self.dataset[i]
        label = None
        if self.labels:
            label = sample.semantic
            if label is None:
                raise CosmeError(
                    f"sample {sample.name!r} has no semantic label; training the "
                    f"teacher needs a labelled dataset"
                )
        item = self.prepare(np.asarray(sample.image), None if label is None else np.asarray(label))
        size = item[0].nbytes + (0 if item[1] is None else item[1].nbytes)
        if self.used + size <= self.budget:
            self._cache[i] = item
            self.used += size
        return item


def to_input(
    images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], device: torch.device
) -> Tensor:
    """uint8 RGB (H, W, 3) images → normalised float (B, 3, H, W), channels_last.

    The same float32 operations as :meth:`Pipeline.preprocess` ((x / 255 − mean) / std), done in
    numpy on the (B, H, W, 3) array: this runs in the prefetch thread, and numpy's single-threaded
    loops do not fight the training step for torch's intra-op threads (on 2 busy cores torch's
    threaded elementwise ops took ~10× longer here). The NHWC array viewed as NCHW *is*
    channels_last memory, so no copy is needed.
    """
    x = np.stack(images).astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2).to(device, non_blocking=True)


# ----------------------------------------------------------------------------- checkpoints


def _step_dirs(directory: Path) -> List[Tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    found = _step_dirs(Path(directory))
    return found[-1][1] if found else None


def clear_checkpoints(directory: str | Path) -> None:
    """Remove the checkpoints this loop wrote (and the directory when that leaves it empty)."""
    directory = Path(directory)
    for _, p in _step_dirs(directory):
        shutil.rmtree(p, ignore_errors=True)
    if directory.is_dir():  # half-written ones a killed run left behind
        for p in directory.glob(".step-*"):
            shutil.rmtree(p, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


def optimizer_to_parts(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Tensor], Dict]:
    """Split an optimizer's state dict into safetensors-ready tensors and JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors: Dict[str, Tensor] = {}
    extra: Dict[str, Dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                extra.setdefault(str(idx), {})[name] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "state_extra": extra}


def optimizer_from_parts(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], rest: Mapping[str, Any]
) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in rest.get("state_extra", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in rest["param_groups"]:
        # JSON has no tuples; torch's optimizers keep e.g. Adam's betas as one.
        groups.append(
            {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # safetensors stores contiguous tensors; give per-parameter state its parameter's memory
    # format again (e.g. channels_last) so the optimizer's kernels see matching layouts.
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for name, value in st.items():
                if isinstance(value, Tensor) and value.shape == p.shape and value.dim() == 4:
                    st[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``<directory>/step-<step>/`` atomically; keep the newest ``keep`` checkpoints."""
    from cosme_ros.bundle import write_tensors

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step-{step:08d}"
    opt_tensors, opt_rest = optimizer_to_parts(optimizer)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        **_jsonable(dict(state)),
        "optimizer": opt_rest,
    }
    with atomic.atomic_dir(target, force=True) as tmp:
        write_tensors(tmp / "model.safetensors", model.state_dict())
        write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for _, old in _step_dirs(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_checkpoint_state(path: Path) -> Dict[str, Any]:
    """The ``state.json`` of a ``step-*`` checkpoint directory, validated."""
    try:
        doc = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CosmeError(f"{path / 'state.json'}: cannot read checkpoint state ({exc})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != CHECKPOINT_FORMAT
        or doc.get("version") != CHECKPOINT_VERSION
    ):
        raise CosmeError(
            f"{path / 'state.json'}: not a version-{CHECKPOINT_VERSION} " f"{CHECKPOINT_FORMAT}"
        )
    return doc


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    doc: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Restore model and optimizer from ``path`` (a ``step-*`` directory); return its state."""
    from cosme_ros.bundle import read_tensors
    from cosme_ros.errors import BundleError

    doc = doc if doc is not None else read_checkpoint_state(path)
    try:
        weights = read_tensors(path / "model.safetensors")
        opt = read_tensors(path / "optimizer.safetensors")
    except BundleError as exc:
        raise CosmeError(str(exc)) from None
    try:
        model.load_state_dict(weights, strict=True)
        optimizer_from_parts(optimizer, {k: v.to(device) for k, v in opt.items()}, doc["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CosmeError(
            f"{path}: checkpoint does not fit this model/optimizer ({first})"
        ) from None
    return doc


# ----------------------------------------------------------------------------- the loop


@dataclass
class LoopSettings:
    """How long and how to train; ``fingerprint`` must match for ``resume`` to continue."""

    epochs: int
    batch: int  # global batch (all processes together)
    lr: float
    seed: int = 0
    warmup: Optional[int] = None  # None: default_warmup(total)
    checkpoint_every: int = 0  # steps; 0 = never
    checkpoint_dir: Optional[Path] = None
    resume: bool = False
    keep_checkpoints: int = 2
    fingerprint: Dict[str, Any] = field(default_factory=dict)
    desc: str = "train"
    prefetch: bool = True


@dataclass
class FitResult:
    steps: int
    epochs: int
    steps_per_epoch: int
    final_loss: float
    epoch_loss: List[float]
    seconds: float  # training time over all runs (resumes included)
    images_per_second: float  # this run's steps, global images, excluding checkpoint writes
    resumed_from: Optional[int]
    history: Dict[str, Any]


class Task:
    """What a training command plugs into :func:`fit`."""

    def load(self, indices: np.ndarray, step: int) -> Any:
        """This process's (already sharded) samples of one step, augmented, on the device."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, global_count: int) -> Tensor:
        """This process's share of the global-batch loss (:meth:`Distributed.share`)."""
        raise NotImplementedError

    def end_of_epoch(self, model: nn.Module, epoch: int) -> Optional[Dict[str, Any]]:
        """Optional per-epoch evaluation; what it returns goes into the history."""
        return None


def check_fresh_start(
    checkpoint_dir: Optional[Path], resume: bool, force: bool, ctx: Distributed
) -> None:
    """Without ``resume``, refuse to silently overwrite a crashed run's checkpoints; with
    ``force``, discard them."""
    if resume or checkpoint_dir is None or latest_checkpoint(checkpoint_dir) is None:
        return
    if not force:
        raise CosmeError(
            f"{checkpoint_dir}: holds checkpoints of an earlier run; pass --resume "
            f"to continue it or --force to start over"
        )
    ctx.barrier()
    if ctx.is_main:
        clear_checkpoints(checkpoint_dir)
    ctx.barrier()


@contextlib.contextmanager
def training_run(
    checkpoint_dir: Path, *, threads: Optional[int], device: str, resume: bool, force: bool
):
    """What every training command does around its training: set the CPU threads, join the
    torchrun group (or run alone), check the checkpoint directory for an earlier run
    (:func:`check_fresh_start`), and leave the group however training ends.

    Yields ``(ctx, threads)``: the :class:`Distributed` context and the threads per process.
    """
    n_threads = setup_threads(threads)
    ctx = Distributed.from_environment(device)
    try:
        check_fresh_start(checkpoint_dir, resume, force, ctx)
        if resume and ctx.is_main and checkpoint_dir is not None:
            atomic.remove_temporaries(checkpoint_dir)  # a killed run's half-written step
        yield ctx, n_threads
    finally:
        ctx.close()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    n_samples: int,
    settings: LoopSettings,
    ctx: Distributed,
) -> FitResult:
    """Train ``model`` (already on ``ctx.device``) for ``settings.epochs`` epochs of
    ``n_samples // batch`` steps (at least one; the remainder is dropped, so every step has the
    full batch and BatchNorm never sees a lone sample)."""
    batch = min(settings.batch, n_samples)
    if batch < max(2, ctx.world_size):
        raise CosmeError(
            f"need a batch of at least {max(2, ctx.world_size)} images (BatchNorm, "
            f"{ctx.world_size} process(es)); have {n_samples} image(s), "
            f"--batch {settings.batch}"
        )
    spe = max(1, n_samples // batch)
    total = settings.epochs * spe
    warmup = default_warmup(total) if settings.warmup is None else settings.warmup
    fingerprint = _jsonable(
        {
            **settings.fingerprint,
            "epochs": settings.epochs,
            "batch": batch,
            "lr": settings.lr,
            "seed": settings.seed,
            "warmup": warmup,
            "images": n_samples,
        }
    )
    state = _resume(model, optimizer, settings, ctx, fingerprint, total)
    net = _parallel(model, ctx)
    model.train()

    def indices_of(step: int) -> np.ndarray:
        epoch, k = divmod(step, spe)
        order = epoch_order(settings.seed, epoch, n_samples)
        return ctx.shard(order[k * batch : (k + 1) * batch])

    pool = ThreadPoolExecutor(1) if settings.prefetch else None
    pending = None
    bar = tqdm(
        total=total,
        initial=state.start,
        desc=settings.desc,
        unit="step",
        disable=not ctx.is_main,
        dynamic_ncols=True,
    )
    if (
        state.start % spe
    ):  # resumed mid-epoch: the running epoch mean restarts from the checkpoint's
        state.epoch_sum, state.epoch_steps = state.history.get("partial", [0.0, 0])
    try:
        for step in range(state.start, total):
            t0 = time.perf_counter()
            # the next step's batch is prepared in a thread while this one computes
            data = pending.result() if pending is not None else task.load(indices_of(step), step)
            if pool is not None and step + 1 < total:
                pending = pool.submit(task.load, indices_of(step + 1), step + 1)
            else:
                pending = None
            lr = lr_at(step, total, settings.lr, warmup)
            loss = _step(net, optimizer, task, data, batch, lr, ctx, step)
            state.add(loss, batch, time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", ips=f"{state.rate():.1f}")
            done = step + 1
            if done % spe == 0:
                state.end_of_epoch(model, task, done // spe - 1)
            state.history["partial"] = [state.epoch_sum, state.epoch_steps]
            if _checkpoint_due(settings, ctx, done, total):
                _save(settings, done, model, optimizer, state, fingerprint, spe)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    model.eval()
    return state.result(settings.epochs, spe, total)


@dataclass
class _FitState:
    """The books of one :func:`fit`: where it starts, time, losses and the history."""

    start: int = 0
    seconds: float = 0.0
    resumed_from: Optional[int] = None
    history: Dict[str, Any] = field(default_factory=lambda: {"epoch_loss": [], "epoch_eval": []})
    run_seconds: float = 0.0
    run_images: int = 0
    epoch_sum: float = 0.0
    epoch_steps: int = 0
    loss: float = float("nan")

    def add(self, loss: float, images: int, seconds: float) -> None:
        self.loss = loss
        self.run_seconds += seconds
        self.run_images += images
        self.seconds += seconds
        self.epoch_sum += loss
        self.epoch_steps += 1

    def rate(self) -> float:
        """Images per second of this run (not counting the time before a resume)."""
        return self.run_images / max(self.run_seconds, 1e-9)

    def end_of_epoch(self, model: nn.Module, task: Task, epoch: int) -> None:
        self.history["epoch_loss"].append(self.epoch_sum / max(1, self.epoch_steps))
        self.epoch_sum, self.epoch_steps = 0.0, 0
        model.eval()
        with torch.no_grad():
            evaluation = task.end_of_epoch(model, epoch)
        model.train()
        if evaluation is not None:
            self.history["epoch_eval"].append({"epoch": epoch + 1, **evaluation})

    def result(self, epochs: int, spe: int, total: int) -> FitResult:
        self.history.pop("partial", None)
        losses = self.history["epoch_loss"]
        return FitResult(
            steps=total,
            epochs=epochs,
            steps_per_epoch=spe,
            final_loss=losses[-1] if losses else self.loss,
            epoch_loss=list(losses),
            seconds=self.seconds,
            images_per_second=(
                self.run_images / self.run_seconds if self.run_seconds else float("nan")
            ),
            resumed_from=self.resumed_from,
            history=self.history,
        )


def _resume(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: LoopSettings,
    ctx: Distributed,
    fingerprint: Dict[str, Any],
    total: int,
) -> _FitState:
    """A fresh start, or the state of the latest checkpoint (``--resume``) when it was written
    by a run with the same settings (else a CosmeError naming what differs)."""
    if not (settings.resume and settings.checkpoint_dir is not None):
        return _FitState()
    path = latest_checkpoint(settings.checkpoint_dir)
    if path is None:
        if ctx.is_main:
            print(f"no checkpoint in {settings.checkpoint_dir}: starting from scratch")
        return _FitState()
    doc = read_checkpoint_state(path)
    if doc.get("fingerprint") != fingerprint:
        theirs = doc.get("fingerprint") or {}
        diff = sorted(
            k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k)
        )
        raise CosmeError(
            f"{path}: written by a run with other settings ({', '.join(diff)}"
            f" differ); resume with the same arguments or start over "
            f"with --force"
        )
    load_checkpoint(path, model, optimizer, ctx.device, doc)
    if ctx.is_main:
        print(f"resuming from {path} (step {int(doc['step'])} of {total})")
    return _FitState(
        start=int(doc["step"]),
        seconds=float(doc["seconds"]),
        resumed_from=int(doc["step"]),
        history=doc["history"],
    )


def _save(
    settings: LoopSettings,
    done: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _FitState,
    fingerprint: Dict[str, Any],
    spe: int,
) -> None:
    save_checkpoint(
        settings.checkpoint_dir,
        done,
        model,
        optimizer,
        {
            "epoch": done // spe,
            "seconds": state.seconds,
            "fingerprint": fingerprint,
            "history": state.history,
            "last_loss": state.loss,
        },
        keep=settings.keep_checkpoints,
    )


def _checkpoint_due(settings: LoopSettings, ctx: Distributed, done: int, total: int) -> bool:
    """Rank 0 writes a checkpoint every ``checkpoint_every`` steps, not after the last one."""
    every = settings.checkpoint_every
    return bool(
        ctx.is_main
        and settings.checkpoint_dir is not None
        and every
        and done % every == 0
        and done < total
    )


def _parallel(model: nn.Module, ctx: Distributed) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Sync BN keeps the buffers identical on every process: no need to broadcast them.
    return DDP(
        model,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        forward_sync_buffers=False,
    )


def _step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    data: Any,
    batch: int,
    lr: float,
    ctx: Distributed,
    step: int,
) -> float:
    """One optimisation step at learning rate ``lr``; the loss averaged over the processes."""
    for group in optimizer.param_groups:  # lr_scale: e.g. a pretrained backbone's
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    loss = task.loss(net, data, batch)
    loss.backward()
    optimizer.step()
    reported = (
        ctx.sum(loss.detach().float()) / ctx.world_size if ctx.enabled else loss.detach().float()
    )
    value = float(reported)
    if not math.isfinite(value):
        raise CosmeError(f"loss became {value} at step {step + 1}; lower --lr")
    return value


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: Optional[Mapping[str, float]] = None
) -> List[Dict[str, Any]]:
    """Decay conv/linear weights only; BatchNorm parameters and biases (ndim ≤ 1) are exempt.

    ``lr_scales`` maps a parameter-name prefix (e.g. ``"backbone."``) to a factor on the learning
    rate of the parameters under it (``fit`` applies it as ``lr_scale``); the rest get 1.
    """
    scales = dict(lr_scales or {})

    def scale_of(name: str) -> float:
        return next((f for prefix, f in scales.items() if name.startswith(prefix)), 1.0)

    groups: List[Dict[str, Any]] = []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for scale in sorted({scale_of(n) for n, _ in named}, reverse=True):
        for decayed in (True, False):
            params = [p for n, p in named if scale_of(n) == scale and (p.ndim > 1) == decayed]
            if params or (decayed and scale == 1.0):
                group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
                if scale != 1.0:
                    group["lr_scale"] = scale
                groups.append(group)
    return groups


# ----------------------------------------------------------------------------- shared by the trainings


def on_device(model: nn.Module, ctx: Distributed) -> nn.Module:
    """``model`` for training on this process's device: synchronised BatchNorm under torchrun,
    channels_last (oneDNN's and cuDNN's fast layout)."""
    if ctx.enabled:
        model = convert_sync_batchnorm(model, ctx.device)
    return model.to(ctx.device, memory_format=torch.channels_last)


def training_samples(dataset, size: Tuple[int, int], cfg, labels: bool, cache_bytes: int):
    """The dataset's samples shrunk once for training at ``size`` (the largest zoom of ``cfg``
    kept) and cached within ``cache_bytes`` (:class:`PreparedSamples`)."""
    from cosme_ros.train.augment import shrink_for_training

    return PreparedSamples(
        dataset,
        lambda im, lab: shrink_for_training(im, lab, size, cfg.scale[1]),
        labels=labels,
        budget_bytes=cache_bytes,
    )


def run_record(
    result: FitResult, settings: LoopSettings, images: int, size, cfg, bf16: bool, ctx
) -> Dict[str, Any]:
    """What every training records about its run (the model card's ``train`` section)."""
    return {
        "images": int(images),
        "epochs": settings.epochs,
        "batch": min(settings.batch, images),
        "steps": result.steps,
        "lr": settings.lr,
        "schedule": f"linear warm-up, poly 0.9 ({result.steps} steps)",
        "seed": settings.seed,
        "size": list(size),
        "augment": cfg.as_dict(),
        "bf16": bf16,
        "final_loss": result.final_loss,
        "epoch_loss": result.epoch_loss,
        "seconds": round(result.seconds, 1),
        "processes": ctx.world_size,
        "device": ctx.device.type,
    }
