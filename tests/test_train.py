import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.model.config import ModelConfig
from stagegpt.train.config import TrainConfig
from stagegpt.train.optim import lr_at, param_groups
from stagegpt.train.rundir import read_metrics, step_dirs
from stagegpt.train.trainer import Trainer

MODEL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16"]


@pytest.fixture(scope="module")
def markov1(markov_data) -> Path:
    return markov_data(order=1, vocab=16, tokens=200_000, seed=3)


def train_args(data, out, steps, *extra):
    return ["train", "--stage", "5", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", "4", "--eval-every", "3",
            "--eval-batches", "2", "--ckpt-every", "100", "--warmup-steps", "2",
            "--dropout", "0.1", "--no-progress", *MODEL, *extra]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in rows]


def final_weights(run_dir):
    return load_file(str(step_dirs(run_dir)[-1] / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], atol=atol), key


def test_interrupted_and_resumed_run_is_bit_exact(markov1, tmp_path, capsys):
    assert main(train_args(markov1, tmp_path / "full", 10)) == 0

    def interrupt_at_5(trainer, row):
        if row["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    model_config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1)
    train_config = TrainConfig(max_steps=10, batch_size=4, eval_every=3, eval_batches=2,
                               ckpt_every=100, warmup_steps=2)
    first = Trainer(5, model_config, train_config, markov1, tmp_path / "split", progress=False,
                    on_step=interrupt_at_5).fit()
    assert first.interrupted and first.step == 5
    assert capsys.readouterr().err.endswith("stage 5 stopped at step 5; checkpoint saved. "
                                            "Continue with the same command plus --resume.\n")
    assert [int(p.name.split("_")[1]) for p in step_dirs(tmp_path / "split")] == [5]
    assert main(train_args(markov1, tmp_path / "split", 10, "--resume")) == 0

    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    assert len(losses(tmp_path / "full")) == 10
    assert_same_weights(final_weights(tmp_path / "split"), final_weights(tmp_path / "full"))


def test_existing_run_is_not_overwritten_without_resume(markov1, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(markov1, out, 2)) == 0
    before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(train_args(markov1, out, 2)) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and len(err.splitlines()) == 1
    assert (out / "metrics.jsonl").read_bytes() == before


def test_stage1_reaches_markov_order1_entropy(markov1, tmp_path):
    entropy = json.loads((markov1 / "meta.json").read_text())["entropy_rate"]
    result = Trainer(1, ModelConfig(n_embd=32, block_size=32),
                     TrainConfig(max_steps=300, batch_size=16, lr=3e-2, min_lr=3e-3,
                                 warmup_steps=10, eval_every=300, eval_batches=40,
                                 ckpt_every=1000, weight_decay=0.0),
                     markov1, tmp_path / "s1", progress=False).fit()
    assert result.val_loss <= 1.03 * entropy, (result.val_loss, entropy)


def test_checkpoints_hold_everything_sample_needs(markov1, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(markov1, out, 3)) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.stage == 5 and ckpt.trainer_state["step"] == 3
    assert ckpt.tokenizer.vocab_size == ckpt.config.vocab_size
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"step", "tokens", "train_loss", "val_loss", "lr",
                            "tokens_per_sec", "elapsed"}


def test_schedule_warms_up_then_decays_to_min_lr():
    config = TrainConfig(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.55)
    assert lr_at(100, config) == pytest.approx(0.1)


def test_no_decay_on_biases_norms_and_embeddings(tiny_config):
    from stagegpt import build_model

    model = build_model(5, tiny_config)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and ("c_" in n) for n in decayed)
    assert "wte.weight" not in decayed and "wpe.weight" not in decayed


def run_bounded(command: list[str], seconds: float = 120, **kwargs):
    """Run a command in its own session; if it hangs, kill it with every process it started
    (torchrun's workers too) and fail, instead of hanging the test suite."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command[:6])} ... hung for {seconds} s: {err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def run_cli(*args, **kwargs):
    return run_bounded([sys.executable, "-m", "stagegpt", *args], **kwargs)


def torchrun(*args, **kwargs):
    """Two DDP workers on this machine; --standalone takes a free port, so runs never meet."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "stagegpt", *args], env=env, **kwargs)


DDP_ARGS = ["--eval-batches", "1", "--warmup-steps", "1", "--dropout", "0", "--no-progress",
            "--stage", "5", *MODEL]


def test_ddp_two_processes_match_one_process(markov1, tmp_path):
    common = ["--data", str(markov1), "--max-steps", "4", "--eval-every", "4",
              "--ckpt-every", "4", *DDP_ARGS]
    ddp = torchrun("train", "--out", str(tmp_path / "ddp"), "--batch-size", "4", *common)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = run_cli("train", "--out", str(tmp_path / "one"), "--batch-size", "8", *common,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-2000:]
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "one"),
                        atol=1e-5)
    # and the same logged losses: they were rank 0's half of each batch, and its val batches
    ddp_rows, one_rows = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert [r[0] for r in ddp_rows] == [r[0] for r in one_rows] == [1, 2, 3, 4]
    for (_, train, val), (_, train_one, val_one) in zip(ddp_rows, one_rows, strict=True):
        assert train == pytest.approx(train_one, rel=1e-6)
        assert val == (val_one and pytest.approx(val_one, rel=1e-6))


def test_ddp_resume_with_dropout_is_bit_exact(markov1, tmp_path):
    """Each rank draws its own dropout masks. A checkpoint held rank 0's RNG state only, and
    on resume every rank took it: both ranks drew the same masks from then on."""
    import shutil

    common = ["--data", str(markov1), "--batch-size", "4", "--max-steps", "6", "--eval-every",
              "3", "--ckpt-every", "3", *DDP_ARGS, "--dropout", "0.1"]
    full = torchrun("train", "--out", str(tmp_path / "full"), *common)
    assert full.returncode == 0, full.stderr[-2000:]
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(step_dirs(tmp_path / "split")[-1])  # as a run stopped at step 3 leaves it
    resumed = torchrun("train", "--out", str(tmp_path / "split"), *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "step_00000003" in resumed.stderr
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    assert_same_weights(final_weights(tmp_path / "split"), final_weights(tmp_path / "full"))
    full = tmp_path / "full"
    for checkpoint, ranks in ((step_dirs(full)[-1], 2), (full / "best", 0)):
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert len(state.get("torch_rng_ranks", [])) == ranks  # best/ is never resumed
        assert load_checkpoint(checkpoint).trainer_state["step"] == state["step"]


def test_resume_on_another_world_size_keeps_the_global_batch(markov1, tmp_path, capsys):
    """A 2-process run resumed in one process trained on with half its global batch (the
    world size was never compared), and the resume that keeps its batches, 1 process x
    batch 8 for 2 x 4, was refused as another batch_size."""
    import shutil

    common = ["--data", str(markov1), "--max-steps", "6", "--eval-every", "3", "--ckpt-every",
              "3", *DDP_ARGS]
    ddp = torchrun("train", "--out", str(tmp_path / "ddp"), "--batch-size", "4", *common)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    out = tmp_path / "split"
    shutil.copytree(tmp_path / "ddp", out)
    shutil.rmtree(step_dirs(out)[-1])  # as a run stopped at step 3 leaves it
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--batch-size", "4", *common, "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"stagegpt train: error: cannot resume {out} on 1 process of batch_size 4: it trained "
        "on 2 processes of batch_size 4, 8 windows a step; pass --batch-size 8 to go on with "
        "the same batches\n")
    assert [p.name for p in step_dirs(out)] == ["step_00000003"]
    assert main(["train", "--out", str(out), "--batch-size", "8", *common, "--resume"]) == 0
    assert_same_weights(final_weights(out), final_weights(tmp_path / "ddp"), atol=1e-5)


def test_a_rank_whose_peer_failed_says_so_in_one_line(markov1, tmp_path):
    """Rank 0 cannot write its checkpoint: its one-line error was followed by rank 1's
    traceback of a gloo 'Connection closed by peer'."""
    out = tmp_path / "ddp"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoints go")
    ddp = torchrun("train", "--out", str(out), "--data", str(markov1), "--batch-size", "2",
                   "--max-steps", "4", "--eval-every", "2", "--ckpt-every", "2", *DDP_ARGS)
    assert ddp.returncode != 0
    assert f"stagegpt train: error: cannot create directory {out}/checkpoints" in ddp.stderr
    assert ("stagegpt train: error: process 1 of 2 stopped: another process of this run ended "
            "first (its own error, or torchrun's report, says why); fix that and rerun (with "
            "--resume if a checkpoint was saved)\n") in ddp.stderr
    assert "[rank1]: Traceback" not in ddp.stderr, ddp.stderr[-3000:]


def test_ddp_ranks_stop_together_on_a_time_budget(markov1, tmp_path):
    """Each rank has its own clock. A rank that stopped alone would leave the other waiting in
    the next gradient all-reduce; the ranks agree every step instead."""
    out = tmp_path / "ddp"
    ddp = torchrun("train", "--out", str(out), "--data", str(markov1), "--batch-size", "4",
                   "--max-steps", "100000", "--max-seconds", "1.5", "--eval-every", "1000",
                   "--ckpt-every", "1000", *DDP_ARGS)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    step = load_checkpoint(step_dirs(out)[-1]).trainer_state["step"]
    assert 1 <= step < 100000
    assert f"step {step}," in ddp.stdout


def test_max_seconds_is_the_runs_whole_budget_across_resumes(markov1, tmp_path, capsys):
    """A run that used up its --max-seconds resumes to nothing (it trained one more step
    and wrote one more checkpoint each time); a larger budget trains on."""
    out = tmp_path / "run"

    def run(seconds, *extra):
        assert main(train_args(markov1, out, 100000, "--max-seconds", seconds, "--eval-every",
                               "100000", *extra)) == 0
        return step_dirs(out)[-1].name

    first = run("0.5")
    capsys.readouterr()
    assert run("0.5", "--resume") == first
    assert "its max_seconds: nothing to do (raise it to train on)" in capsys.readouterr().err
    assert run("1.0", "--resume") > first


def test_sigkill_leaves_complete_checkpoints_and_resume_continues(markov1, tmp_path):
    threads = ["--threads", str(torch.get_num_threads())]  # the reference's, bit for bit
    args = train_args(markov1, tmp_path / "run", 20, *threads)
    args[args.index("--ckpt-every") + 1] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "stagegpt", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(step_dirs(tmp_path / "run")) < 2:
        time.sleep(0.05)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = step_dirs(tmp_path / "run")
    assert found, "no checkpoint before the kill"
    for directory in found:
        load_checkpoint(directory)  # every visible checkpoint is complete
    resumed = run_cli(*train_args(markov1, tmp_path / "run", 20, "--resume", *threads))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    assert main(train_args(markov1, tmp_path / "ref", 20)) == 0
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(tmp_path / "ref"))


@pytest.mark.parametrize("case", ["missing_data", "meta_mismatch", "block_too_big",
                                  "other_stage", "batch_zero"])
def test_bad_training_input_is_one_line_error(case, markov1, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(markov1, data)
    out = tmp_path / "run"
    assert main(train_args(data, out, 1)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    args = train_args(data, out, 2, "--resume")
    if case == "missing_data":
        args[args.index("--data") + 1] = str(tmp_path / "nope")
    elif case == "meta_mismatch":
        (data / "train.bin").write_bytes((data / "train.bin").read_bytes()[:-6])
    elif case == "block_too_big":
        args += ["--block-size", "100000"]
    elif case == "other_stage":
        args[args.index("--stage") + 1] = "4"
    elif case == "batch_zero":
        args += ["--batch-size", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_integer_betas_from_toml_become_floats_adamw_takes():
    from stagegpt.model import build_model
    from stagegpt.train.optim import make_optimizer

    config = TrainConfig(beta1=0, beta2=0)
    assert (config.beta1, config.beta2) == (0.0, 0.0) and isinstance(config.beta1, float)
    model = build_model(5, ModelConfig(vocab_size=16, block_size=8, n_embd=16, n_layer=1,
                                       n_head=1))
    assert make_optimizer(model, config).param_groups[0]["betas"] == (0.0, 0.0)


def test_a_diverging_loss_names_lr_in_python_and_cli(markov1, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "_train_step", lambda self: float("nan"))
    config = ModelConfig(vocab_size=16, block_size=8, n_embd=16, n_layer=1, n_head=1)
    trainer = Trainer(5, config, TrainConfig(max_steps=2, eval_batches=1, batch_size=2),
                      markov1, tmp_path / "run", progress=False)
    with pytest.raises(StagegptError) as err:
        trainer.fit()
    message = str(err.value)
    assert err.value.param == "lr" and message.startswith("lr 0.001 may be too high")
    assert "--" not in message and "grad_clip" in message
    assert main(train_args(markov1, tmp_path / "cli", 2)) == 2
    assert "error: --lr 0.001 may be too high: the loss became nan" in capsys.readouterr().err
    assert "(no checkpoint was written)" in message  # it used to claim one was kept


def test_a_finished_run_resumed_without_good_metrics_reports_what_it_has(markov1, tmp_path,
                                                                          capsys):
    """A finished run's metrics.jsonl deleted or edited: --resume raised a TypeError or a
    KeyError traceback formatting its last figures."""
    out = tmp_path / "run"
    assert main(train_args(markov1, out, 2)) == 0
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "train_loss": "x"}\n')
    capsys.readouterr()
    assert main(train_args(markov1, out, 2, "--resume")) == 0
    assert capsys.readouterr().out.startswith("stage 5: step 2, train loss -, val loss -, ")
    (out / "metrics.jsonl").unlink()
    assert main(train_args(markov1, out, 2, "--resume")) == 0
    assert capsys.readouterr().out.startswith("stage 5: step 2, train loss -, val loss -, ")


def test_a_nan_validation_loss_stops_the_run_before_saving_it(markov1, tmp_path,
                                                                monkeypatch, capsys):
    """A finite train loss with NaN weights after the step: the run ended with exit 0 and
    a NaN-weighted newest checkpoint, val loss nan."""
    monkeypatch.setattr(Trainer, "evaluate", lambda self: float("nan"))
    out = tmp_path / "run"
    assert main(train_args(markov1, out, 4, "--eval-every", "2", "--ckpt-every", "1")) == 2
    err = capsys.readouterr().err
    assert err == ("stagegpt train: error: --lr 0.001 may be too high: the validation loss "
                   f"became nan at step 2 and training stopped (the last good checkpoint is "
                   f"kept in {out}); lower it, or clip gradients with grad_clip > 0\n")
    assert [p.name for p in step_dirs(out)] == ["step_00000001"]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_token_ids_outside_the_vocabulary_are_a_clear_error(markov1, tmp_path, capsys):
    import shutil

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(markov1, data)
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    tokens[:] = 999  # sizes still match meta.json, the ids do not fit vocab 16
    tokens.tofile(data / "train.bin")
    assert main(train_args(data, tmp_path / "run", 2)) == 2
    err = capsys.readouterr().err.strip()
    assert "outside the vocabulary" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("world, rank, says", [("2", "0", "joined no process group"),
                                               ("two", "0", "WORLD_SIZE is 'two'"),
                                               ("1", "-1", "RANK is '-1'"),
                                               ("1", "3", "RANK is 3")])
def test_torchrun_variables_without_torchrun_are_one_line_errors(world, rank, says, markov1,
                                                                 tmp_path, monkeypatch,
                                                                 capsys):
    """A Trainer outside `stagegpt train`'s torchrun start (a Python script, a fine-tune)
    with WORLD_SIZE or RANK left in the environment."""
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(StagegptError, match=says):
        Trainer(1, ModelConfig(n_embd=16, block_size=8), TrainConfig(max_steps=1), markov1,
                tmp_path / "run")
    assert not (tmp_path / "run").exists()
    if world == "2":  # `stagegpt train` joins the group torchrun made, given its address
        monkeypatch.delenv("MASTER_ADDR", raising=False)
        monkeypatch.delenv("MASTER_PORT", raising=False)
        says = "MASTER_ADDR and MASTER_PORT are unset"
    assert main(train_args(markov1, tmp_path / "cli", 1)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
