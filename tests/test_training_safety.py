"""Nothing lost: kill -9 during training and data preparation, corrupted caches, NaN, finished runs, config numbers.

Training runs in child processes forked from a small server that imported vidattn once (a fresh interpreter per
run would spend most of the test importing torch). Kills land deterministically inside a save through the
test-only hook ``VIDATTN_TEST_KILL_AT=point@n`` (the process SIGKILLs itself there), plus one SIGKILL from the
test at a random moment. The reference is the same run done in this process without interruption.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gray_clips import gray_video

from vidattn.cli.main import main as cli_main
from vidattn.training.cache import CachedLatentDataset, prepare_data
from vidattn.training.cache_check import CacheError, verify_cache
from vidattn.training.checkpointing import MANIFEST, checkpoints, incomplete_reason, newest_complete, resolve_resume, write_manifest
from vidattn.training.config import TrainConfig
from vidattn.training.finite import nonfinite_step, nonfinite_tensors
from vidattn.training.train_lora import LORA_FILE, main as train_main, train

TEXT_LEN = 8
SRC = str(Path(__file__).resolve().parent.parent / "src")

# A fork server: imports vidattn once, then runs each job (`vidattn ...` argv, extra env, log file) in a forked
# child; prints the child's pid, then its exit code (negative: killed by that signal). It never runs torch itself.
SERVER = r"""
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
from vidattn.cli.main import main
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(job["env"])
            main(job["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkServer:
    """Runs `vidattn` commands in children of one pre-imported process; :meth:`close` kills whatever is left."""

    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
        env.pop("VIDATTN_TEST_KILL_AT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        self.tmp, self.child, self.jobs, self.buffer = tmp, None, 0, b""

    def _line(self, deadline: float) -> str:
        """The server's next output line (unbuffered reads, so a line already sent is never stuck in a buffer)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("the fork server's child did not finish in time")
            if select.select([fd], [], [], wait)[0]:
                chunk = os.read(fd, 4096)
                assert chunk, f"fork server died (exit {self.proc.poll()})"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()

    def start(self, argv: list[str], kill_at: str | None = None) -> tuple[int, Path]:
        self.jobs += 1
        log = self.tmp / f"job{self.jobs}.log"
        job = {"argv": argv, "env": {"VIDATTN_TEST_KILL_AT": kill_at} if kill_at else {}, "log": str(log)}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.child = int(self._line(time.monotonic() + 120))  # the first job waits for the imports
        return self.child, log

    def wait(self, timeout: float = 120) -> int:
        code = int(self._line(time.monotonic() + timeout))
        self.child = None
        return code

    def run(self, argv: list[str], kill_at: str | None = None) -> tuple[int, str]:
        _, log = self.start(argv, kill_at)
        code = self.wait()
        return code, log.read_text()

    def close_child(self) -> None:
        """SIGKILL the running child, if any (a failed test must not leave one training)."""
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.wait(timeout=30)  # the server reports the kill; keeps its output in step for the next job
            except (TimeoutError, AssertionError):
                self.child = None

    def close(self) -> None:
        self.close_child()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One fork server for the module's subprocess tests; it and any running child are killed at the end."""
    if not hasattr(os, "fork"):
        pytest.skip("the kill tests fork children (POSIX only)")
    forks = ForkServer(tmp_path_factory.mktemp("forks"))
    try:
        yield forks
    finally:
        forks.close()


pytestmark = pytest.mark.usefixtures("one_thread")


def make_clips(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gray_video(folder / f"v{i}.mp4", 6, 32, 32, first=10 + 30 * i, step=20)
        (folder / f"v{i}.txt").write_text(f"a red circle moving {'left right up down'.split()[i % 4]}")
    return folder


def prepare(clips: Path, out: Path, **kw):
    return prepare_data(clips, None, "default", out, num_frames=5, height=32, width=32, max_sequence_length=TEXT_LEN, **kw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Three 5-frame 32x32 clips encoded with the embedded default model."""
    root = tmp_path_factory.mktemp("safety")
    out = root / "cache"
    prepare(make_clips(root / "clips", 3), out)
    return out


def config_yaml(path: Path, data: Path, out: Path, **extra) -> Path:
    values = {
        "model": "default", "data": str(data), "output_dir": str(out), "lora_rank": 4, "learning_rate": "1e-3",
        "max_train_steps": 8, "checkpointing_steps": 1, "checkpoints_total_limit": 1, "resume_from_checkpoint": "latest",
        "ema_decay": 0.5, "lr_scheduler": "cosine", "lr_warmup_steps": 1, "shift": 3.0, "progress_bar": False, **extra,
    }
    # numbers are written as the docs show them (learning_rate: 1e-3, which YAML reads as a string)
    path.write_text("\n".join(f"{k}: {'null' if v is None else v}" for k, v in values.items()) + "\n")
    return path


def inside_save(out: Path) -> bool:
    """Whether the output folder shows an interrupted save: a temp folder, or a checkpoint folder without its manifest."""
    return any(out.glob(".checkpoint-*")) or any(not (p / MANIFEST).is_file() for p in checkpoints(out))


# -- the kill loop ------------------------------------------------------------------------------------------
def test_kill_loop_resumes_to_the_uninterrupted_lora(cache, server, tmp_path, capsys):
    reference = train(TrainConfig.from_yaml(config_yaml(tmp_path / "ref.yaml", cache, tmp_path / "ref")))
    config = str(config_yaml(tmp_path / "run.yaml", cache, tmp_path / "run"))
    out = tmp_path / "run"
    argv = ["train", "--config", config]
    # (hook point, visit): inside save_state (optimizer not yet written), written but unsealed, sealed but not renamed,
    # renamed but older ones not pruned, halfway through pruning, between steps, mid-export; None = SIGKILL from here
    plan = ["save_files@2", "save_written@2", None, "save_sealed@1", "save_renamed@1", "prune@1", "step@1", "export@1"]
    rng = random.Random(17)
    kills, in_save, resumed, steps_seen = 0, 0, 0, []
    try:
        for kill_at in plan:
            if kill_at is not None:
                code, log = server.run(argv, kill_at)
            else:  # a kill at a random moment of training, sent by the test
                pid, log_path = server.start(argv)
                deadline = time.monotonic() + 120
                while "Saving current state" not in (log_path.read_text() if log_path.exists() else "") and time.monotonic() < deadline:
                    time.sleep(0.01)  # its first save has begun: training is under way
                time.sleep(rng.uniform(0.0, 0.15))  # short of the 6 steps left, even on a fast idle CPU
                os.kill(pid, signal.SIGKILL)
                code, log = server.wait(), log_path.read_text()
            assert "Traceback" not in log, log
            assert code == -signal.SIGKILL, (kill_at, code, log)
            kills += 1
            in_save += kill_at.startswith(("save_", "prune")) if kill_at else inside_save(out)
            resumed += "resumed from" in log
            newest, _ = newest_complete(out)
            steps_seen.append(int(newest.name.split("-")[1]) if newest else 0)
            assert not (out / LORA_FILE).exists() and not (out / "finished.json").exists()  # no LoRA before the end
        code, log = server.run(argv)
        assert code == 0 and "trained 8 steps" in log, log
        resumed += "resumed from" in log
        losses_before = (out / "losses.json").read_bytes()
        code, log = server.run(argv)  # a finished run is not redone
        assert code == 0 and "holds a finished run (8 steps" in log and "Use --overwrite" in log, log
        assert (out / "losses.json").read_bytes() == losses_before
    finally:
        server.close_child()
    assert steps_seen == sorted(steps_seen) and steps_seen[0] >= 1  # progress is never lost
    assert kills == len(plan) and in_save >= 5 and resumed == kills
    final, expected = load_file(str(out / LORA_FILE)), load_file(str(tmp_path / "ref" / LORA_FILE))
    assert final.keys() == expected.keys()
    diff = max((final[k] - expected[k]).abs().max().item() for k in final)
    assert diff <= 1e-6, diff
    assert any(v.abs().max() > 0 for k, v in final.items() if "lora_B" in k)  # it trained
    losses = json.loads(losses_before)
    assert [s for s, _ in losses] == list(range(1, 9))  # every step once, across all the runs
    assert np.allclose([x for _, x in losses], [x for _, x in reference.losses], atol=1e-6)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-8"] and not list(out.glob(".checkpoint-*"))
    with capsys.disabled():
        print(f"\nkill loop: {kills} kills, {in_save} inside a save, {resumed} resumes, final LoRA max |diff| {diff:.2e}")


def test_overwrite_trains_again_from_step_0(cache, tmp_path, capsys):
    config = config_yaml(tmp_path / "c.yaml", cache, tmp_path / "run", max_train_steps=3, checkpoints_total_limit=None, ema_decay=None)
    assert train_main(["--config", str(config)]) == 0
    first = load_file(str(tmp_path / "run" / LORA_FILE))
    stamp = (tmp_path / "run" / "losses.json").stat().st_mtime_ns
    capsys.readouterr()
    assert train_main(["--config", str(config)]) == 0
    assert "holds a finished run" in capsys.readouterr().out
    assert (tmp_path / "run" / "losses.json").stat().st_mtime_ns == stamp
    assert train_main(["--config", str(config), "--overwrite"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    again = load_file(str(tmp_path / "run" / LORA_FILE))
    assert all(torch.equal(first[k], again[k]) for k in first)  # from scratch: the same run again
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # raising max_train_steps continues a finished run from its last checkpoint
    assert train_main(["--config", str(config), "--set", "max_train_steps=4"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "run" / "losses.json").read_text())) == 4


# -- checkpoints ------------------------------------------------------------------------------------------
def fake_checkpoint(root: Path, step: int, seal: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "optimizer.bin").write_bytes(os.urandom(64))
    (folder / "trainable.safetensors").write_bytes(os.urandom(32))
    if seal:
        write_manifest(folder, step)
    return folder


def test_latest_skips_incomplete_checkpoints_and_a_named_one_is_an_error(tmp_path, caplog):
    good = fake_checkpoint(tmp_path, 2)
    truncated = fake_checkpoint(tmp_path, 3)
    with open(truncated / "optimizer.bin", "r+b") as f:
        f.truncate(10)
    changed = fake_checkpoint(tmp_path, 4)
    (changed / "trainable.safetensors").write_bytes(os.urandom(32))  # same size, other bytes
    unsealed = fake_checkpoint(tmp_path, 5, seal=False)
    assert "optimizer.bin has 10 bytes" in incomplete_reason(truncated)
    assert "SHA-256" in incomplete_reason(changed)
    assert "no manifest.json" in incomplete_reason(unsealed)
    with caplog.at_level("WARNING", logger="vidattn.training"):
        assert resolve_resume("latest", tmp_path) == good
    skipped = [r.getMessage() for r in caplog.records if "skipping incomplete checkpoint" in r.getMessage()]
    assert len(skipped) == 3 and all(str(p) in " ".join(skipped) for p in (truncated, changed, unsealed))
    with pytest.raises(ValueError, match=r"checkpoint-5' is incomplete: no manifest.*newest complete one is .*checkpoint-2"):
        resolve_resume(str(unsealed), tmp_path)
    assert resolve_resume(str(good), tmp_path) == good
    assert resolve_resume("latest", tmp_path / "empty") is None


def test_named_incomplete_checkpoint_is_one_line_exit_2(cache, tmp_path, capsys):
    unsealed = fake_checkpoint(tmp_path / "run", 2, seal=False)
    config = config_yaml(tmp_path / "c.yaml", cache, tmp_path / "run", resume_from_checkpoint=str(unsealed))
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is incomplete" in err and "Traceback" not in err


# -- data preparation -------------------------------------------------------------------------------------
def test_interrupted_prepare_data_resumes_and_verifies(server, tmp_path, capsys):
    clips = make_clips(tmp_path / "clips", 3)
    out = tmp_path / "cache"
    argv = ["prepare-data", "--videos", str(clips), "--model", "default", "--out", str(out), "--num-frames", "5",
            "--height", "32", "--width", "32", "--max-sequence-length", str(TEXT_LEN)]
    try:
        code, log = server.run(argv, "prepare_clip@2")  # killed with clip 2 written under its temp name only
        assert code == -signal.SIGKILL, log
        assert len(list(out.glob("clip-*.safetensors"))) == 1 and len(list(out.glob(".clip-*.tmp"))) == 1
        with pytest.raises(CacheError, match="interrupted"):
            CachedLatentDataset(out)  # no index: never a partial cache that looks complete
        code, log = server.run(argv)
        assert code == 0 and "wrote 3 clip(s)" in log and "(1 complete from an earlier run)" in log, log
        # a re-run with other settings into the complete cache, killed: the old index and its files stay usable
        code, log = server.run(argv[:-1] + ["6"], "prepare_clip@2")
        assert code == -signal.SIGKILL, log
    finally:
        server.close_child()
    assert len(CachedLatentDataset(out)) == 3 and CachedLatentDataset(out).batch([0, 1, 2])["text_embeds"].shape[1] == TEXT_LEN
    report = prepare(clips, out)  # the original settings again: nothing to encode
    assert report.reused == 3 and report.clips == 3
    assert not list(out.glob(".clip-*")) and len(list(out.glob("clip-*.safetensors"))) == 3  # temp and other-settings files gone
    fresh = tmp_path / "fresh"
    prepare(clips, fresh)  # uninterrupted: the same clips, bit for bit
    index, fresh_index = (json.loads((p / "index.json").read_text()) for p in (out, fresh))
    assert [c["sha256"] for c in index["clips"]] == [c["sha256"] for c in fresh_index["clips"]]
    cli_main(["prepare-data", "--verify", "--out", str(out)])  # exit 0: returns
    assert "verified 3 clip(s)" in capsys.readouterr().out and verify_cache(out) == (3, [])


def corrupt(cache: Path, tmp: Path, how: str) -> tuple[Path, Path]:
    """A copy of ``cache`` with its second clip damaged: truncated, garbage header, deleted, or NaN values."""
    copy = tmp / f"cache_{how}"
    copy.mkdir()
    for f in cache.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    victim = copy / json.loads((copy / "index.json").read_text())["clips"][1]["file"]
    data = victim.read_bytes()
    if how == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        victim.write_bytes(b"\xff" * 64 + data[64:])
    elif how == "deleted":
        victim.unlink()
    elif how == "nan":  # same size, same header: only the values tell
        tensors = load_file(str(victim))
        tensors["latents"][0, 0, 0, 0] = float("nan")
        save_file(tensors, str(victim), metadata={"source": "x"})
    return copy, victim


@pytest.mark.parametrize("how,message", [("truncated", "bytes, the index recorded"), ("garbage", "unreadable"), ("deleted", "missing")])
def test_corrupted_cache_is_named_before_step_1(cache, tmp_path, capsys, how, message):
    data, victim = corrupt(cache, tmp_path, how)
    config = config_yaml(tmp_path / "c.yaml", data, tmp_path / "run")
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # stopped before any step
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare-data", "--verify", "--out", str(data)])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert f"bad: {victim}" in out and "1 problem(s)" in out


def test_nan_latent_stops_training_without_a_lora(cache, tmp_path, capsys):
    data, victim = corrupt(cache, tmp_path, "nan")
    checked, problems = verify_cache(data)
    assert checked == 3 and [p for p, _ in problems] == [str(victim)] and "SHA-256" in problems[0][1]
    config = config_yaml(tmp_path / "c.yaml", data, tmp_path / "run", nonfinite="skip")  # bad data is never skipped
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"cached clip {victim}: 1 non-finite value(s) in latents" in err
    assert not (tmp_path / "run" / LORA_FILE).exists() and not (tmp_path / "run" / "finished.json").exists()


def test_nonfinite_loss_is_an_error_or_a_counted_skip(cache, tmp_path, capsys):
    # lr 1e30: step 1 is finite, then the LoRA weights overflow attention and every later loss is NaN
    config = config_yaml(tmp_path / "c.yaml", cache, tmp_path / "err", learning_rate="1e30", max_train_steps=3, ema_decay=None, lr_scheduler="constant", lr_warmup_steps=0)
    assert train_main(["--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "error: step 2: loss is nan" in err and "nonfinite: skip" in err and err.count("\n") == 1, err
    assert not (tmp_path / "err" / LORA_FILE).exists()
    assert [p.name for p in checkpoints(tmp_path / "err")] == ["checkpoint-1"]  # the last good state is kept
    skip = TrainConfig.from_yaml(config, ["nonfinite=skip", f"output_dir={tmp_path / 'skip'}"])
    result = train(skip)
    assert result.skipped_steps == 2 and [s for s, _ in result.losses] == [1]
    assert json.loads((tmp_path / "skip" / "finished.json").read_text())["skipped_steps"] == 2
    params = dict(result.transformer.named_parameters())
    assert not nonfinite_tensors(params.items())  # the skipped steps left the weights as step 1 made them


def test_finite_guard_names_the_problem():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, float("inf"), 1.0])
    assert nonfinite_step(0.5, [("w", p)]) == "the gradient of 1 parameter(s) is not finite (first: w)"
    assert nonfinite_step(0.5, [("w", p)], check_grads=False) is None
    assert nonfinite_step(float("nan"), []) == "loss is nan"
    assert nonfinite_tensors([("a", torch.ones(2)), ("b", torch.tensor([float("nan")]))]) == ["b"]


# -- configuration and command-line errors -----------------------------------------------------------------
def test_yaml_numbers_in_every_form(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: default\ndata: d\noutput_dir: o\nlearning_rate: 1e-4\nadam_epsilon: 1.0e-8\nweight_decay: 1E-2\n"
                    "max_train_steps: 1e3\nextra_params_learning_rate: '2e-4'\nmax_grad_norm: .5\n")
    config = TrainConfig.from_yaml(path)
    assert (config.learning_rate, config.adam_epsilon, config.weight_decay) == (1e-4, 1e-8, 1e-2)
    assert config.max_train_steps == 1000 and isinstance(config.max_train_steps, int)
    assert (config.extra_params_learning_rate, config.max_grad_norm) == (2e-4, 0.5)
    for bad, message in [("learning_rate: fast", "learning_rate must be a number"), ("learning_rate: .nan", "finite"),
                         ("max_train_steps: 2.5", "whole number"), ("nonfinite: ignore", "nonfinite must be one of")]:
        path.write_text(f"model: default\ndata: d\noutput_dir: o\n{bad}\n")
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_yaml(path)


@pytest.mark.parametrize("setting,message", [
    ("data=/no/such/cache", "data must be a cache folder written by prepare-data"),
    ("method_args={decya: 0.2}", "unknown radial method_args argument(s) ['decya']"),
    ("learning_rate=quick", "learning_rate must be a number"),
])
def test_user_errors_are_one_line_exit_2(cache, tmp_path, capsys, setting, message):
    config = config_yaml(tmp_path / "c.yaml", cache, tmp_path / "run", method="radial")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--config", str(config), "--set", setting])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        train_main(["--config", str(config), "--set", setting, "--debug"])  # --debug: the exception itself


def test_prepare_data_and_eval_errors_exit_2(tmp_path, capsys):
    for argv, message in [
        (["prepare-data", "--videos", str(tmp_path / "none"), "--model", "default", "--out", str(tmp_path / "c")], "videos must be a folder"),
        (["prepare-data", "--out", str(tmp_path / "c")], "--videos and --model required"),
        (["eval", "--methods", "nope", "--prompts", "1"], "methods must be names in"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    with pytest.raises(ValueError, match="videos must be a folder"):
        cli_main(["prepare-data", "--videos", str(tmp_path / "none"), "--model", "default", "--out", str(tmp_path / "c"), "--debug"])


def test_verify_reports_every_bad_clip_by_its_values(cache, tmp_path):
    data, victim = corrupt(cache, tmp_path, "nan")
    index = json.loads((data / "index.json").read_text())
    for clip in index["clips"]:
        clip.pop("sha256")  # no hash to compare: only the values can tell
    (data / "index.json").write_text(json.dumps(index))
    assert verify_cache(data) == (3, [(str(victim), "1 non-finite value(s) in latents")])
    with pytest.raises(CacheError, match="1 non-finite value"):
        CachedLatentDataset(data).batch([0, 1, 2])
