"""Trainer: learning, exact resume, crash safety of checkpoints, DDP on gloo, signals, config validation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import yaml

import refiner
from refiner.training import ConfigError, Trainer, build_config, load_config
from refiner_cli import main as cli_main
from refiner.training.trainer import EXIT_NON_FINITE

REPO = Path(__file__).resolve().parents[2]

# A 2-block, 32-wide ViT on 32 px canvases: each step takes milliseconds on one CPU thread.
TINY: Dict[str, Any] = {
    "model": "vit_micro_patch4_32",
    "model_overrides": {"embed_dim": 32, "depth": 2, "num_heads": 2},
    "dataset": "cluttered-mnist",
    "dataset_options": {"canvas_size": 32, "scale_range": [0.7, 1.0], "fragments": 1, "fragment_size": 6,
                        "max_shift": 4, "epoch_size": 128, "test_size": 40},
    "epochs": 2, "batch_size": 32, "eval_batch_size": 40, "lr": 2e-3, "warmup_epochs": 0.5,
    "threads": 1, "progress": False,
}


def tiny_config(tmp_path: Path, name: str = "run", **changes: Any):
    return build_config({**TINY, "output_dir": str(tmp_path / name), **changes})


def test_a_few_steps_reduce_the_loss(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path, epochs=50, warmup_epochs=0.0, label_smoothing=0.0))
    images, labels, _ = next(iter(trainer._loader()))
    losses = [float(trainer._train_step(images, labels)[0]) for _ in range(25)]
    # Memorising one batch: the loss must fall clearly (2.33 -> ~1.75 measured), not just fluctuate.
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == min(losses[-5:]) or losses[-1] < 0.8 * losses[0], losses


def test_run_writes_checkpoints_metrics_and_curve(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    assert Trainer(config).fit() == 0
    out = Path(config.output_dir)
    for which in ("last", "best"):
        checkpoint = refiner.load_checkpoint(out / which)
        data = checkpoint.config["extra"]["data"]  # CONTRACT: everything needed to feed the model
        assert data["dataset"] == "cluttered-mnist" and data["dataset_options"]["canvas_size"] == 32
        # Every option as used, defaults included (TINY leaves position_step at its default).
        assert data["dataset_options"]["position_step"] == 1 and data["dataset_options"]["seed"] == 0
        assert data["img_size"] == 32 and data["in_chans"] == 1 and len(data["class_names"]) == 10
        assert len(data["mean"]) == len(data["std"]) == 1
        assert checkpoint.config["extra"]["train_config"]["lr"] == 2e-3
        assert "git_commit" in checkpoint.config["extra"]
    assert refiner.load_training_state(out / "last")["epoch"] == 2
    assert refiner.load_training_state(out / "best") is None  # best holds weights only
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and 0.0 <= records[-1]["test_accuracy"] <= 1.0
    assert (out / "training_curve.png").stat().st_size > 1000
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2

    # `refiner eval` on the result: accuracy, per-class accuracy, confusion-matrix PNG.
    assert cli_main(["eval", str(out / "best"), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["count"] == 40 and len(report["per_class_accuracy"]) == 10
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # Mixup, drop path and EMA make every step depend on the RNG, the schedule and the average.
    recipe = {"mixup": 0.4, "cutmix": 1.0, "drop_path": 0.1, "ema_decay": 0.9}
    straight = tiny_config(tmp_path, "straight", **recipe)
    assert Trainer(straight).fit() == 0
    interrupted = tiny_config(tmp_path, "interrupted", **recipe)
    assert Trainer(interrupted).fit(stop_after_steps=6) == 0  # stops inside epoch 2 (4 steps per epoch)
    assert refiner.load_training_state(Path(interrupted.output_dir) / "last")["step"] == 6
    assert Trainer(interrupted, resume=True).fit() == 0

    a = refiner.load_training_state(Path(straight.output_dir) / "last")
    b = refiner.load_training_state(Path(interrupted.output_dir) / "last")
    assert a["step"] == b["step"] == 8
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    lines = lambda c: [json.loads(x) for x in (Path(c.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_accuracy"] for r in lines(straight)] == [r["test_accuracy"] for r in lines(interrupted)]


def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    assert Trainer(tiny_config(tmp_path, epochs=1)).fit() == 0
    with pytest.raises(ConfigError, match="lr"):
        Trainer(tiny_config(tmp_path, epochs=1, lr=1e-2), resume=True)
    with pytest.raises(ConfigError, match="no training state|no checkpoint"):
        Trainer(tiny_config(tmp_path, "never-ran"), resume=True)


def test_sigint_saves_and_exits_cleanly(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path))

    def interrupt_at_step_3(*_: Any) -> None:
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.model.head.register_forward_hook(interrupt_at_step_3)
    assert trainer.fit() == 130
    state = refiner.load_training_state(Path(trainer.config.output_dir) / "last")
    assert state["step"] == 3 and state["step_in_epoch"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, capsys) -> None:
    trainer = Trainer(tiny_config(tmp_path))

    def poison_epoch_2(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output * float("nan") if trainer.step >= 5 else output

    trainer.model.head.register_forward_hook(poison_epoch_2)
    assert trainer.fit() == EXIT_NON_FINITE
    assert "non-finite loss" in capsys.readouterr().err
    last = refiner.load_checkpoint(Path(trainer.config.output_dir) / "last")
    assert last.metrics["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in last.model.parameters())


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {repo!r})
    from refiner.training import Trainer, build_config
    config = build_config({config!r})
    trainer = Trainer(config)
    trainer.fit()                                  # epoch 1 saved normally
    real_save = torch.save
    def torn_save(obj, handle, *args, **kwargs):   # the next training_state write stops halfway
        handle.write(b"partial training state")
        handle.flush()
        print("WRITING", flush=True)
        time.sleep(120)
    torch.save = torn_save
    trainer.save("last")
""")


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    config = {**TINY, "epochs": 1, "output_dir": str(tmp_path / "run")}
    script = tmp_path / "train_then_hang.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), config=config))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "WRITING"
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait(timeout=30)
    last = tmp_path / "run" / "last"
    checkpoint = refiner.load_checkpoint(last)
    assert checkpoint.metrics["epoch"] == 1
    assert refiner.load_training_state(last)["epoch"] == 1
    # The torn write lives only in a temporary sibling; resuming starts from the intact epoch-1 state.
    resumed = Trainer(build_config({**config, "epochs": 1}), resume=True)
    assert resumed.epoch == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_trains_and_saves(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "ddp"), "batch_size": 16}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "refiner_cli", "train", "--config",
               str(config_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "ddp"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone logs
    state = refiner.load_training_state(out / "last")
    assert state["world_size"] == 2 and state["step"] == 2 * (128 // (16 * 2))
    assert refiner.load_checkpoint(out / "best").config["extra"]["world_size"] == 2
    assert not list(tmp_path.glob("ddp/.*tmp*"))  # no staging directories left behind


def test_config_typos_and_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'lerning_rate'"):
        build_config({"lerning_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"'epoch'.*did you mean epochs"):
        build_config({}, ["epoch=3"])
    with pytest.raises(ConfigError, match="'batch_size' must be int"):
        build_config({"batch_size": "big"})
    with pytest.raises(ConfigError, match="even batch_size"):
        build_config({"mixup": 0.8, "batch_size": 33})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_config({"epochs": 2, "warmup_epochs": 5})
    config = build_config({"lr": 1}, ["lr=3e-3", "dataset_options.fragments=2", "ema_decay=null"])
    assert config.lr == 3e-3 and isinstance(config.lr, float) and config.dataset_options == {"fragments": 2}
    with pytest.raises(Exception):
        config.lr = 1.0  # frozen
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nwarmup_epoch: 1\n")
    with pytest.raises(ConfigError, match=r"warmup_epoch.*bad.yaml.*warmup_epochs"):
        load_config(bad)


def test_a_model_that_does_not_fit_the_images_is_refused_before_training(tmp_path: Path) -> None:
    # The shipped 48 px architecture on cluttered-mnist's default 64 px canvases: a clear error at setup,
    # naming both fixes, instead of a shape error inside timm at the first step.
    config = tiny_config(tmp_path, model="vit_mini_patch6_48", model_overrides={}, dataset_options={})
    with pytest.raises(ConfigError, match=r"64x64 images but vit_mini_patch6_48 expects 48x48: set "
                                          r"dataset_options.canvas_size=48 or model_overrides.img_size=64"):
        Trainer(config)
    # mnist's 28 px cannot change: only the model's size is offered.
    with pytest.raises(ConfigError, match=r"mnist gives 28x28 images .*: set model_overrides.img_size=28$"):
        Trainer(tiny_config(tmp_path, name="mnist", model="vit_mini_patch6_48", model_overrides={}, dataset="mnist",
                            dataset_options={}))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_shipped_configs_load_and_the_pair_shares_one_recipe() -> None:
    configs = {p.stem: load_config(p) for p in (REPO / "configs").glob("*.yaml")}
    assert {"cluttered_mnist_vanilla", "cluttered_mnist_refined", "refiner_vit_s_imagenet"} <= set(configs)
    vanilla = configs["cluttered_mnist_vanilla"].to_dict()
    refined = configs["cluttered_mnist_refined"].to_dict()
    differing = {k for k in vanilla if vanilla[k] != refined[k]}
    assert differing == {"model", "output_dir"}, differing
    assert refined["model"] == "refined_" + vanilla["model"]
    imagenet = configs["refiner_vit_s_imagenet"]
    assert (imagenet.lr, imagenet.epochs, imagenet.warmup_epochs, imagenet.mixup, imagenet.cutmix,
            imagenet.drop_path, imagenet.ema_decay, imagenet.random_erasing) == (5e-4, 300, 5, 0.8, 1.0, 0.1,
                                                                                 0.99996, 0.25)


def test_checkpoints_record_the_commit_the_run_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug found on the shipped runs: each save asked git for HEAD, so commits made while a run trained
    # ended up in its checkpoints although that code never ran.
    import refiner.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "git_commit", lambda _directory: "start-commit")
    trainer = Trainer(tiny_config(tmp_path, epochs=1))
    monkeypatch.setattr(trainer_module, "git_commit", lambda _directory: "later-commit")
    assert trainer.fit() == 0
    out = Path(trainer.config.output_dir)
    assert refiner.load_checkpoint(out / "last").config["extra"]["git_commit"] == "start-commit"
    assert yaml.safe_load((out / "config.yaml").read_text())["git_commit"] == "start-commit"


def test_eval_of_a_checkpoint_trained_elsewhere_uses_canvases_of_its_input_size(tmp_path: Path) -> None:
    # No dataset record: cluttered-mnist's 64 px default would not fit this 48 px model.
    refiner.save_checkpoint(refiner.create_model("vit_mini_patch6_48", in_chans=1, num_classes=10), tmp_path / "ck")
    assert cli_main(["eval", str(tmp_path / "ck"), "--dataset", "cluttered-mnist", "--option", "test_size=20",
                     "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["count"] == 20 and report["dataset_options"]["canvas_size"] == 48


# ------------------------------------------------------------------------------ kills at every epoch-end write
class Killed(BaseException):
    """What a SIGKILL does to the code after it: nothing runs (BaseException: no `except Exception` sees it)."""


# Epoch 2 improves on epoch 1, so its end writes a log line, `best` (two renames) and `last` (two renames).
ACCURACY = {1: 0.25, 2: 0.5}
KILL_POINTS = ["log line", "best aside", "best into place", "last aside", "last into place", "curve"]


def _fake_evaluate(holder: list):
    from refiner.training.evaluation import EvalResult

    def evaluate(*_args: Any, **_kwargs: Any) -> EvalResult:  # known accuracies: epoch 2 is the new best
        return EvalResult(accuracy=ACCURACY[holder[0].epoch + 1], loss=1.0,
                          confusion=torch.zeros(10, 10, dtype=torch.int64), count=40)
    return evaluate


def _assert_consistent(out: Path) -> None:
    """What any kill must leave: `best` holds at least the accuracy `last` records as best, and the log has a
    line for every epoch `last` has done and for the epoch `best` is from."""
    from refiner.training.metrics_log import MetricsLog

    last = refiner.load_checkpoint(out / "last").metrics
    best = refiner.load_checkpoint(out / "best").metrics
    logged = {r["epoch"]: r for r in MetricsLog(out).read()}
    assert best["test_accuracy"] >= last["best_accuracy"], (best, last)
    assert set(range(1, last["epoch"] + 1)) <= set(logged), (sorted(logged), last["epoch"])
    assert logged[best["epoch"]]["test_accuracy"] == best["test_accuracy"]


def _assert_resumes_to_the_full_run(out: Path, config, monkeypatch: pytest.MonkeyPatch) -> None:
    import refiner.training.trainer as trainer_module

    holder: list = []
    monkeypatch.setattr(trainer_module, "evaluate", _fake_evaluate(holder))
    holder.append(Trainer(config, resume=True))
    assert holder[0].fit() == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["test_accuracy"]) for r in lines] == [(1, 0.25), (2, 0.5)]
    assert refiner.load_checkpoint(out / "best").metrics["epoch"] == 2
    assert refiner.load_checkpoint(out / "last").metrics["best_accuracy"] == 0.5
    # What the killed save left behind (staging folders, backups) is gone once the resumed run saved.
    assert sorted(p.name for p in out.iterdir() if "tmp" in p.name or ".old-" in p.name) == []


@pytest.mark.parametrize("point", range(len(KILL_POINTS)), ids=KILL_POINTS)
def test_a_kill_inside_any_epoch_end_write_leaves_last_best_and_log_consistent(tmp_path: Path, point: int,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    import refiner.training.trainer as trainer_module
    from refiner.training.metrics_log import MetricsLog

    config = tiny_config(tmp_path)
    holder: list = []
    monkeypatch.setattr(trainer_module, "evaluate", _fake_evaluate(holder))
    holder.append(Trainer(config))
    renames: list = []
    real_rename, real_replace, real_append = os.rename, os.replace, MetricsLog.append

    def killing(real):
        def call(src: Any, dst: Any) -> None:
            if holder[0].epoch == 2:  # the end of epoch 2: count its renames, die before the chosen one
                renames.append(Path(dst).name)
                if len(renames) == point:
                    raise Killed(f"killed before renaming {src} -> {dst}")
            real(src, dst)
        return call

    def torn_append(log: MetricsLog, record: Dict[str, Any]) -> None:
        if record["epoch"] == 2 and point == 0:
            with open(log.path, "a", encoding="utf-8") as handle:  # half a line reaches the disk
                handle.write(json.dumps(record)[:40])
            raise Killed("killed while appending the log line")
        real_append(log, record)

    monkeypatch.setattr(os, "rename", killing(real_rename))
    monkeypatch.setattr(os, "replace", killing(real_replace))
    monkeypatch.setattr(MetricsLog, "append", torn_append)
    with pytest.raises(Killed):
        holder[0].fit()
    monkeypatch.undo()
    out = Path(config.output_dir)
    _assert_consistent(out)
    _assert_resumes_to_the_full_run(out, config, monkeypatch)


SIGKILL_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {repo!r})
    import refiner.training.trainer as trainer_module
    from refiner.training import Trainer, build_config
    from refiner.training.evaluation import EvalResult
    accuracy = {accuracy!r}
    holder = []
    trainer_module.evaluate = lambda *a, **k: EvalResult(accuracy=accuracy[holder[0].epoch + 1], loss=1.0,
                                                         confusion=torch.zeros(10, 10, dtype=torch.int64), count=40)
    holder.append(Trainer(build_config({config!r})))
    real_rename = os.rename
    def hanging_rename(src, dst):                 # epoch 2's new `best` never reaches its place
        if holder[0].epoch == 2 and os.path.basename(dst) == "best":
            print("AT", dst, flush=True)
            time.sleep(120)
        real_rename(src, dst)
    os.rename = hanging_rename
    holder[0].fit()
""")


def test_a_real_sigkill_while_best_is_renamed_into_place_keeps_last_best_and_log_consistent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {**TINY, "output_dir": str(tmp_path / "run")}
    script = tmp_path / "train_until_killed.py"
    script.write_text(SIGKILL_SCRIPT.format(repo=str(REPO), config=config, accuracy=ACCURACY))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("AT ")
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait(timeout=30)
    out = tmp_path / "run"
    _assert_consistent(out)
    _assert_resumes_to_the_full_run(out, build_config(config), monkeypatch)


# ------------------------------------------------------------------------------ re-running into a finished run
def _train_command(config_path: Path, *arguments: str) -> int:
    return cli_main(["train", "--config", str(config_path), *arguments])


def test_training_into_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path, capsys) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "output_dir": str(tmp_path / "run")}))
    assert _train_command(config_path) == 0
    out = tmp_path / "run"
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "best/model.safetensors")}
    capsys.readouterr()
    assert _train_command(config_path) == 2
    message = capsys.readouterr().err
    assert "already holds a training run" in message and "--resume" in message and "--overwrite" in message
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing of the run changed
    # --overwrite starts over (one log line again, a new best), --resume of a finished run trains nothing more.
    assert _train_command(config_path, "--overwrite", "seed=1") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert refiner.load_checkpoint(out / "best").config["extra"]["train_config"]["seed"] == 1
    assert _train_command(config_path, "--resume", "seed=1") == 0


# ----------------------------------------------------------------------------------------- config mistakes
ALIAS_BOMB = "".join(f"  k{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else 'lol'}]\n" for i in range(9))


@pytest.mark.parametrize("change, override, expected", [
    ({"dataset": "imagenet-zz"}, None, "unknown dataset 'imagenet-zz'"),
    ({"dataset_options": {**TINY["dataset_options"], "fragmentz": 2}}, None, "'fragmentz'.*did you mean fragments"),
    ({"model": "vit_nonexistent_patch4"}, None, "unknown model name 'vit_nonexistent_patch4'"),
    ({"eval_split": "validation"}, None, "unknown split 'validation'"),
    ({"betas": ["0.9", "0.99"]}, None, "betas must be two numbers"),
    ({}, "lr=!!python/object/apply:os.system [ls]", "not a plain YAML value"),
    ({}, "model_overrides.depth=[1, 2]", "rejects the overrides"),
])
def test_config_mistakes_are_one_line_messages_not_tracebacks(tmp_path: Path, capsys, change: Dict[str, Any],
                                                               override: Any, expected: str) -> None:
    import re

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "output_dir": str(tmp_path / "run"), **change}))
    assert _train_command(config_path, *([override] if override else [])) == 2
    message = capsys.readouterr().err
    assert re.search(expected, message) and "Traceback" not in message and len(message) < 1000, message


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path: Path, capsys) -> None:
    config_path = tmp_path / "bomb.yaml"  # a few hundred bytes standing for 9**9 = 387 million strings
    config_path.write_text(f"model: vit_micro_patch4_32\noutput_dir: {tmp_path / 'run'}\nmodel_overrides:\n"
                           + ALIAS_BOMB)
    assert config_path.stat().st_size < 1024
    assert _train_command(config_path) == 2
    message = capsys.readouterr().err
    assert "model_overrides.k1" in message and "flat list" in message and len(message) < 1000


def test_a_non_finite_loss_at_the_first_step_says_no_checkpoint_exists(tmp_path: Path, capsys) -> None:
    trainer = Trainer(tiny_config(tmp_path))
    trainer.model.head.register_forward_hook(lambda _m, _i, output: output * float("nan"))
    assert trainer.fit() == EXIT_NON_FINITE
    message = capsys.readouterr().err
    assert "No checkpoint had been saved yet" in message and "last good checkpoint is kept" not in message
    assert not (Path(trainer.config.output_dir) / "last").exists()


# -------------------------------------------------------------------------------- unwritable output folders
def test_output_dirs_that_cannot_be_written_are_named_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "output_dir": str(tmp_path / "file" / "run")}))
    assert _train_command(config_path) == 2
    assert "cannot be written: a part of the path is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        config_path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "output_dir": str(locked / "run")}))
        assert _train_command(config_path) == 2
        assert f"output_dir {locked / 'run'} cannot be written" in capsys.readouterr().err


def test_a_full_disk_during_training_says_so_and_that_last_is_intact(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "run")}))
    real_save = torch.save
    saves: list = []

    def full_after_epoch_1(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(1)
        if len(saves) > 1:  # epoch 2's training state: what torch.save raises when the disk fills mid-write
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 38144 vs 38096")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_epoch_1)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 0))
    assert _train_command(config_path) == 1
    message = capsys.readouterr().err
    assert "the disk is full" in message and f"previous checkpoint in {tmp_path / 'run' / 'last'} is intact" in message
    assert "Traceback" not in message and "unexpected pos" in message
    monkeypatch.undo()
    assert refiner.load_training_state(tmp_path / "run" / "last")["epoch"] == 1
