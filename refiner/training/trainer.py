"""The training loop behind `refiner train` (DESIGN sections 7 and 8).

One `Trainer` runs one `TrainConfig` in one process; under `torchrun` every process runs one and they train
a DistributedDataParallel model together (rank 0 saves and logs).

Output directory layout::

    <output_dir>/config.yaml           the resolved config
    <output_dir>/last/                 checkpoint after every epoch (and on SIGINT/SIGTERM), with training_state.pt
    <output_dir>/best/                 checkpoint of the best evaluation accuracy so far
    <output_dir>/metrics.jsonl         one JSON line per epoch
    <output_dir>/training_curve.png    loss and accuracy per epoch

Every epoch ends with three writes in this order: the ``metrics.jsonl`` line, ``best`` (when improved), then
``last``. ``last`` is the commit point: a run killed anywhere resumes from it, drops the log lines of later
epochs and recomputes them (bit-exactly), so ``best``, ``last`` and the log always agree once resumed, and a
kill never leaves ``last`` claiming a best accuracy that ``best/`` does not hold.

A run never silently replaces another: training into an ``output_dir`` that holds one needs ``resume`` (to
continue it) or ``overwrite`` (to delete it first).

Resume is exact for a fixed world size: every random draw of a step (mixup, drop path, augmentation in the
training process) is seeded from (seed, rank, step), the data order of an epoch from (seed, epoch), and
cluttered-mnist canvases from (seed, epoch, index); a resumed run skips the batches the saved one had done.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..bounded_repr import bounded_repr
from ..checkpoint import CheckpointError, load_training_state, save_checkpoint, tidy_checkpoint
from ..data import build_dataset, canonical_name, dataset_info
from ..registry import create_model
from .config import ConfigError, TrainConfig
from .distributed import DistContext, all_reduce_sum, barrier, init_distributed
from .evaluation import evaluate, normalize_batch
from .metrics_log import CURVE_FILE, METRICS_FILE, MetricsLog
from .schedule import warmup_cosine_scheduler

EXIT_OK = 0
EXIT_NON_FINITE = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Keys that may differ between a run and its resumption: they change where or how fast, not what is trained.
RESUMABLE_CHANGES = ("workers", "threads", "progress", "log_every", "eval_batch_size", "data_root", "download")
CHECKPOINTS = ("last", "best")


class _SkipSampler(Sampler[int]):
    """Yields a sampler's indices after the first ``skip`` (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _derived_seed(*parts: int) -> int:
    """A reproducible 32-bit seed from non-negative parts; SeedSequence mixes them so nearby tuples differ."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def git_commit(directory: Path) -> Optional[str]:
    """HEAD commit of the repository holding ``directory`` (suffix "+dirty" with local changes), or None."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class Trainer:
    """Train one model from a `TrainConfig`.

    Args:
        config: the recipe.
        resume: continue from ``<output_dir>/last`` (which must exist and hold a training state).
        context: distributed context; default `init_distributed()` from the torchrun environment.
        overwrite: delete an earlier run in ``output_dir`` when `fit` starts (without it, and without
            ``resume``, an ``output_dir`` holding a run is refused).

    Raises:
        ConfigError: a config the data or model builders reject, an ``output_dir`` that cannot be written or
            that holds a run (without ``resume``/``overwrite``), or a run that cannot be resumed.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, context: Optional[DistContext] = None,
                 overwrite: bool = False) -> None:
        self.config = config
        self.context = context or init_distributed()
        self.output_dir = Path(config.output_dir)
        self.resume = resume
        self.overwrite = overwrite and not resume
        self._check_output_dir()
        self._stop_signal: Optional[int] = None
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        _seed_everything(config.seed)
        # The code that trains is the code at start-up: a checkpoint saved later must not record a HEAD that
        # moved on while the run was going.
        self.git_commit = git_commit(Path.cwd())
        self._build_data()
        self._build_model()
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_accuracy = -1.0
        self.elapsed_s = 0.0
        if resume:
            self._load_state()

    # ----------------------------------------------------------------------------------------------- setup
    def _existing_run(self) -> list:
        """What of an earlier run ``output_dir`` holds (checkpoints, their backups, the log)."""
        out = self.output_dir
        found = [name for name in (*CHECKPOINTS, METRICS_FILE) if (out / name).exists()]
        found += sorted(p.name for which in CHECKPOINTS for p in out.glob(f"{which}.old-*")) if out.is_dir() else []
        return found

    def _check_output_dir(self) -> None:
        """Refuse, before any work, an output_dir that cannot be written or that holds a run to keep."""
        out = self.output_dir
        if not self.resume and not self.overwrite:
            found = self._existing_run()
            if found:
                raise ConfigError(f"{out} already holds a training run ({', '.join(found)}); continue it with "
                                  f"--resume, replace it with --overwrite (deletes it), or choose another "
                                  f"output_dir")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            kind = ("a part of the path is a file, not a folder" if error.errno in (errno.ENOTDIR, errno.EEXIST)
                    else "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error))
            raise ConfigError(f"output_dir {out} cannot be written: {kind} ({error.filename or out})") from None

    def _remove_earlier_run(self) -> None:
        """``overwrite``: delete the earlier run's checkpoints, log and curve (rank 0, when `fit` starts)."""
        out = self.output_dir
        for which in CHECKPOINTS:
            for path in [out / which, *out.glob(f"{which}.old-*"), *out.glob(f".{which}.tmp-*")]:
                shutil.rmtree(path, ignore_errors=True)
        for name in (METRICS_FILE, CURVE_FILE):
            (out / name).unlink(missing_ok=True)

    def _tidy_output_dir(self) -> None:
        """Delete what killed saves and plots left behind (rank 0, once every process has loaded its state)."""
        for which in CHECKPOINTS:
            tidy_checkpoint(self.output_dir / which)
        for leftover in (f"{METRICS_FILE}.tmp", f".{CURVE_FILE}.tmp.png"):
            (self.output_dir / leftover).unlink(missing_ok=True)

    def _build_data(self) -> None:
        try:
            self._build_data_unchecked()
        except ConfigError:
            raise
        except FileNotFoundError:  # DatasetNotFoundError: its message says where to put the data
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"dataset {self.config.dataset!r}: {str(error).splitlines()[0]}") from None

    def _build_data_unchecked(self) -> None:
        cfg = self.config
        self.dataset_name = canonical_name(cfg.dataset)
        options = dict(cfg.dataset_options)
        self.info = dataset_info(self.dataset_name, root=cfg.data_root, **options)
        train_options = dict(options)
        eval_options = dict(options)
        if self.dataset_name == "cluttered-mnist":
            train_options.setdefault("seed", cfg.seed)  # the canvas stream follows the run's seed
        elif cfg.download:
            train_options["download"] = eval_options["download"] = True
        if self.dataset_name in ("cifar10", "cifar100", "imagefolder"):
            train_options["transform"] = self._pil_train_transform()
        self.train_set = build_dataset(self.dataset_name, "train", root=cfg.data_root, **train_options)
        self.eval_set = build_dataset(self.dataset_name, cfg.eval_split, root=cfg.data_root, **eval_options)
        # Record every option as used where the dataset resolves them (cluttered-mnist: defaults and the stream's
        # seed included), so the checkpoint still describes its canvases if a later version changes a default.
        resolved = getattr(self.train_set, "options", None)
        self.dataset_record = (json.loads(json.dumps(dataclasses.asdict(resolved)))
                               if dataclasses.is_dataclass(resolved) else dict(options))
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.context.world_size,
                                          rank=self.context.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size {cfg.batch_size} x {self.context.world_size} processes exceeds the "
                              f"{len(self.train_set)} training images of {self.dataset_name}")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))

    def _pil_train_transform(self) -> Any:
        from timm.data import create_transform

        cfg = self.config
        # Datasets yield [0, 1] tensors and the loop normalises, so timm's transform must not normalise too.
        return create_transform(self.info.img_size, is_training=True, auto_augment=cfg.randaugment,
                                re_prob=cfg.random_erasing, re_mode="pixel", interpolation="bicubic",
                                mean=(0.0,) * self.info.in_chans, std=(1.0,) * self.info.in_chans)

    def _check_input_size(self, model: nn.Module) -> None:
        """Refuse, before any step, a model whose fixed input size is not the dataset's image size.

        Without this the first forward pass fails deep inside timm's patch embedding (e.g. the 48 px shipped
        architecture on cluttered-mnist's default 64 px canvases).
        """
        patch_embed = getattr(model, "patch_embed", None)
        expected = getattr(patch_embed, "img_size", None)
        flexible = getattr(patch_embed, "dynamic_img_size", False) or not getattr(patch_embed, "strict_img_size", True)
        if expected is None or flexible:
            return
        side = self.info.img_size
        if tuple(expected) != (side, side):
            # Only these datasets can change their image size; the others (mnist, cifar) are what they are.
            size_option = {"cluttered-mnist": "canvas_size", "imagefolder": "img_size"}.get(self.dataset_name)
            fixes = ([f"dataset_options.{size_option}={expected[0]}"] if size_option else []) + \
                [f"model_overrides.img_size={side}"]
            raise ConfigError(f"{self.dataset_name} gives {side}x{side} images but {self.config.model} expects "
                              f"{expected[0]}x{expected[1]}: set {' or '.join(fixes)}")

    def _build_model(self) -> None:
        cfg = self.config
        overrides = {"num_classes": self.info.num_classes, "in_chans": self.info.in_chans,
                     **({"drop_path_rate": cfg.drop_path} if cfg.drop_path else {}), **cfg.model_overrides}
        try:
            model = create_model(cfg.model, **overrides)
        except ValueError as error:  # unknown name (with close matches) or a size the model refuses
            raise ConfigError(f"model {cfg.model!r}: {str(error).splitlines()[0]}") from None
        except (TypeError, AssertionError, RuntimeError) as error:
            raise ConfigError(f"model {cfg.model!r} rejects the overrides {bounded_repr(overrides, 200)}: "
                              f"{bounded_repr(str(error).splitlines()[0] if str(error) else type(error).__name__, 300)}"
                              ) from None
        self._check_input_size(model)
        self.model = model.to(self.context.device)
        self.ddp_model: nn.Module = self.model
        if self.context.distributed:
            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        from timm.optim import create_optimizer_v2

        # timm exempts biases, norms, position embeddings and tokens from weight decay.
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             betas=tuple(cfg.betas))
        self.scheduler = warmup_cosine_scheduler(self.optimizer, self.total_steps, self.warmup_steps, cfg.min_lr,
                                                 cfg.warmup_lr)
        from timm.loss import SoftTargetCrossEntropy

        self.soft_target_loss = SoftTargetCrossEntropy()  # mixup/cutmix targets are class distributions
        self.ema = None
        if cfg.ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=self.info.num_classes)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA average when on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------------------------ state and saving
    def _extra(self) -> Dict[str, Any]:
        cfg = self.config
        import timm

        # CONTRACT "Checkpoint extra and preprocessing": everything a reader needs to feed the model the
        # images it was trained on lives under extra["data"] (eval, analysis and the app read it there).
        data = {"dataset": self.dataset_name, "dataset_options": self.dataset_record,
                "img_size": self.info.img_size, "in_chans": self.info.in_chans,
                "mean": list(self.info.mean), "std": list(self.info.std),
                "range": "images in [0, 1], then (x - mean) / std",
                "class_names": list(self.info.class_names)}
        return {"data": data, "train_config": cfg.to_dict(), "git_commit": self.git_commit,
                "world_size": self.context.world_size, "torch": torch.__version__, "timm": timm.__version__,
                "device": str(self.context.device)}

    def _training_state(self) -> Dict[str, Any]:
        np_state = np.random.get_state()
        state: Dict[str, Any] = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "best_accuracy": self.best_accuracy, "elapsed_s": self.elapsed_s,
            "world_size": self.context.world_size,
            "schedule": {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                         "lr": self.optimizer.param_groups[0]["lr"]},
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])},
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def _metrics(self, record: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        out = {"epoch": self.epoch, "step": self.step, "best_accuracy": self.best_accuracy,
               "wall_time_s": round(self.elapsed_s, 1), "dataset": self.dataset_name,
               "eval_split": self.config.eval_split, "num_parameters": sum(p.numel() for p in self.model.parameters())}
        if record:
            out.update({k: v for k, v in record.items() if k not in out})
        return out

    def save(self, which: str, record: Optional[Dict[str, Any]] = None, with_state: bool = True) -> None:
        """Write checkpoint ``which`` ("last" or "best") atomically (rank 0 only)."""
        if self.context.is_main:
            save_checkpoint(self.eval_model, self.output_dir / which, metrics=self._metrics(record),
                            extra=self._extra(), training_state=self._training_state() if with_state else None)

    def _load_state(self) -> None:
        last = self.output_dir / "last"
        try:
            state = load_training_state(last)
        except CheckpointError as error:
            raise ConfigError(f"cannot resume from {last}: {error} (train without --resume to start over)") from None
        if state is None:
            raise ConfigError(f"cannot resume: {last} has no training state (train without --resume to start over)")
        saved_cfg = json.loads((Path(last) / "config.json").read_text(encoding="utf-8"))["extra"]["train_config"] \
            if (Path(last) / "config.json").is_file() else None
        if saved_cfg is not None:
            current = self.config.to_dict()
            changed = [k for k in current if k not in RESUMABLE_CHANGES and saved_cfg.get(k) != current[k]]
            if changed:
                raise ConfigError(f"cannot resume {last}: the config differs in {', '.join(changed)} "
                                  f"(saved: {', '.join(f'{k}={saved_cfg.get(k)!r}' for k in changed)})")
        if int(state["world_size"]) != self.context.world_size:
            raise ConfigError(f"cannot resume: saved with {state['world_size']} processes, now "
                              f"{self.context.world_size} (the data order would change)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        # `last` is the commit point: lines and a `best` of epochs after it come from a killed run and are
        # recomputed (bit-exactly) by this one.
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_accuracy = float(state["best_accuracy"])
        self.elapsed_s = float(state["elapsed_s"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(int(v) for v in rng["python"]), None))
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), int(rng["numpy_pos"]), 0, 0.0))

    # ------------------------------------------------------------------------------------------ training
    @contextmanager
    def _signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a request to save and stop after the current step."""
        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        previous = {}
        for signum in EXIT_SIGNAL:
            try:
                previous[signum] = signal.signal(signum, request_stop)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep default handling
                pass
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _loader(self) -> DataLoader:
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        generator = torch.Generator().manual_seed(_derived_seed(cfg.seed, self.context.rank, self.epoch, 1))
        return DataLoader(self.train_set, batch_size=cfg.batch_size,
                          sampler=_SkipSampler(self.sampler, self.step_in_epoch * cfg.batch_size),
                          num_workers=cfg.workers, drop_last=True, generator=generator,
                          pin_memory=self.context.device.type == "cuda", persistent_workers=False)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One optimizer step. Returns (loss, number correct, finite) with loss/correct as 0-d tensors."""
        cfg = self.config
        _seed_everything(_derived_seed(cfg.seed, self.context.rank, self.step, 0))
        self.scheduler.step_update(self.step)  # stateless in the step, so a resumed run gets the same rates
        inputs = normalize_batch(images, self.info.mean, self.info.std)
        targets: torch.Tensor = labels
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, labels)
        device = self.context.device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
            logits = self.ddp_model(inputs)
        logits = logits.float()
        if self.mixup is not None:
            loss = self.soft_target_loss(logits, targets)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        # Every process must agree to stop, or DDP would hang in the next all-reduce.
        flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0,
                              1.0 if self._stop_signal is not None else 0.0], device=device)
        all_reduce_sum(flags, self.context)
        if flags[0] > 0:
            return loss.detach(), torch.zeros(()), False
        if flags[1] > 0 and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another process was told to stop
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        return loss.detach(), correct, True

    def fit(self, stop_after_steps: Optional[int] = None) -> int:
        """Train until ``config.epochs`` are done.

        Args:
            stop_after_steps: stop (saving ``last``, as on SIGINT) once the global step reaches this value;
                how tests interrupt a run at a chosen point.

        Returns:
            0 when done, 130/143 after SIGINT/SIGTERM (``last`` saved), 3 after a non-finite loss (the last good
            checkpoint kept).
        """
        cfg = self.config
        main = self.context.is_main
        log = MetricsLog(self.output_dir) if main else None
        # Every process has loaded its state before rank 0 moves backups into place or deletes anything.
        barrier(self.context)
        if main:
            if self.overwrite:
                self._remove_earlier_run()
            self._tidy_output_dir()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "config.yaml", "w", encoding="utf-8") as handle:
                yaml.safe_dump({**cfg.to_dict(), "git_commit": self.git_commit}, handle, sort_keys=False)
            if log is not None:
                # Lines of epochs after the resumed one came from a run that is being replaced.
                log.truncate_after(self.epoch)
        with self._signals():
            while self.epoch < cfg.epochs:
                code = self._run_epoch(log, stop_after_steps)
                if code is not None:
                    return code
        if main:
            print(f"done: best {cfg.eval_split} accuracy {self.best_accuracy:.4f}; checkpoints in {self.output_dir}",
                  file=sys.stderr)
        return EXIT_OK

    def _run_epoch(self, log: Optional["MetricsLog"], stop_after_steps: Optional[int]) -> Optional[int]:
        from tqdm import tqdm

        cfg = self.config
        world = self.context.world_size
        started = time.perf_counter()
        loss_sum, correct_sum, seen = 0.0, 0, 0
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and self.context.is_main), dynamic_ncols=True, file=sys.stderr,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        self.ddp_model.train()
        for batch in self._loader():
            images = batch[0].to(self.context.device, non_blocking=True)
            labels = batch[1].to(self.context.device, non_blocking=True)
            loss, correct, finite = self._train_step(images, labels)
            if not finite:
                bar.close()
                if self.context.is_main:
                    last = self.output_dir / "last"
                    kept = (f"The last good checkpoint is kept in {last}" if last.is_dir() else
                            "No checkpoint had been saved yet, so none is kept")
                    print(f"non-finite loss ({float(loss)}) at step {self.step} (epoch {self.epoch + 1}); stopping. "
                          f"{kept}; lower lr or enable grad_clip.", file=sys.stderr)
                return EXIT_NON_FINITE
            self.step_in_epoch += 1
            loss_sum += float(loss) * len(labels)
            correct_sum += int(correct)
            seen += len(labels)
            bar.update(1)
            if self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                rate = seen * world / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct_sum / seen:.3f}",
                                img_s=f"{rate:.0f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            if self._stop_signal is not None or (stop_after_steps is not None and self.step >= stop_after_steps):
                bar.close()
                self.elapsed_s += time.perf_counter() - started
                self.save("last")
                barrier(self.context)
                code = EXIT_SIGNAL.get(self._stop_signal, EXIT_OK) if self._stop_signal is not None else EXIT_OK
                if self.context.is_main:
                    print(f"stopped at step {self.step} (epoch {self.epoch + 1}, batch {self.step_in_epoch}); saved "
                          f"{self.output_dir / 'last'}; continue with --resume", file=sys.stderr)
                return code if self._stop_signal is not None else EXIT_OK
        bar.close()
        train_time = time.perf_counter() - started
        # Loss and accuracy over the whole global batch stream, not just this process's shard.
        totals = all_reduce_sum(torch.tensor([loss_sum, correct_sum, seen], dtype=torch.float64,
                                             device=self.context.device), self.context).cpu()
        loss_sum, correct_sum, seen = float(totals[0]), int(totals[1]), int(totals[2])
        result = evaluate(self.eval_model, self.eval_set, self.info.num_classes, self.info.mean, self.info.std,
                          batch_size=cfg.eval_batch_size, device=self.context.device, context=self.context,
                          workers=cfg.workers, amp=cfg.amp)
        self.elapsed_s += time.perf_counter() - started
        self.epoch += 1
        self.step_in_epoch = 0
        record = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                  "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct_sum / max(seen, 1),
                  f"{cfg.eval_split}_loss": result.loss, f"{cfg.eval_split}_accuracy": result.accuracy,
                  "train_images_per_s": seen / max(train_time, 1e-9),
                  "epoch_time_s": time.perf_counter() - started, "wall_time_s": self.elapsed_s}
        improved = result.accuracy > self.best_accuracy
        if improved:
            self.best_accuracy = result.accuracy
        record["best_accuracy"] = self.best_accuracy
        # The log line, then `best`, then `last` (the commit point; see the module docstring): a kill between
        # any two leaves `last` at the previous epoch, whose resume drops this line and redoes this epoch.
        if log is not None:
            log.append(record)
        if improved:
            self.save("best", record, with_state=False)
        self.save("last", record)
        if log is not None:
            log.plot(cfg.eval_split)  # derived from the log: redrawn every epoch, so last of all
            print(f"epoch {self.epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc "
                  f"{record['train_accuracy']:.4f} | {cfg.eval_split} acc {result.accuracy:.4f} "
                  f"(best {self.best_accuracy:.4f}) | {record['train_images_per_s']:.0f} img/s", file=sys.stderr)
        barrier(self.context)
        if self._stop_signal is not None:
            return EXIT_SIGNAL.get(self._stop_signal, EXIT_OK)
        return None
