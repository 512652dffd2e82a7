"""Mini-track trainer end to end (smoke preset) and its offline data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.mini import data as mini_data
from harness.mini.train import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--threads", "1"]

VAL0 = re.compile(r"^Step (\d{5}) \| Val BPB: (\d+\.\d{6}) \| Val Loss: (\d+\.\d{6})$")
VAL = re.compile(r"^Step (\d{5}) \| Epoch (\d+) \| Val BPB: (\d+\.\d{6}) \| Val Loss: (\d+\.\d{6})$")
STEP = re.compile(r"^step (\d{5}) \((\d+\.\d{2})%\) \| loss: (\d+\.\d{6}) \| dt: \d+\.\d{2}ms \| tok/sec: [\d,]+ "
                  r"\| bf16_mfu: \d+\.\d{2}%( \| eta: \d+\.\dm)?$")
SUMMARY = [r"Peak memory: \d+\.\d{2} MiB", r"Total training time: \d+\.\d{2}m", r"Final train loss: \d+\.\d{6}",
           r"Min val BPB: \d+\.\d{6}", r"Min val Loss: \d+\.\d{6}", r"Total wall time: \d+\.\d{2}s \(\d+\.\d{2}m\)"]


def run(capsys, *args: str) -> tuple[int, list[str]]:
    rc = main([*SMOKE, *args])
    return rc, capsys.readouterr().out.splitlines()


def without_timings(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = re.sub(r"dt: [\d.]+ms \| tok/sec: [\d,]+", "dt: X", line)
        line = re.sub(r" \| eta: [\d.]+m", "", line)
        if not re.match(r"(Peak memory|Total training time|Total wall time)", line):
            out.append(line)
    return out


def val_losses(lines: list[str]) -> list[float]:
    return [float(m.group(4)) for m in map(VAL.match, lines) if m]


def test_log_follows_upstream_formats(capsys):
    rc, lines = run(capsys)
    assert rc == 0
    sha = [line for line in lines if line.startswith("Mini data sha256:")]
    assert len(sha) == 1 and re.fullmatch(r"Mini data sha256: [0-9a-f]{64} \| train tokens: \d+ \| val tokens: \d+", sha[0])
    assert any(re.fullmatch(r"Training for 2 epoch\(s\) \(~\d+ steps estimated\)", line) for line in lines)
    assert sum(bool(VAL0.match(line)) for line in lines) == 1
    assert [int(m.group(2)) for m in map(VAL.match, lines) if m] == [1, 2]
    steps = [int(m.group(1)) for m in map(STEP.match, lines) if m]
    assert steps and steps == sorted(steps) and steps[0] == 1
    assert "Starting epoch 1" in lines and "Starting epoch 2" in lines
    # every line is one of the known kinds: nothing a parser would have to guess about
    known = [VAL0, VAL, STEP, re.compile(r"^Starting epoch \d+$"), re.compile(r"^(Mini track \||Model:|Optimizer:|Mini data sha256:|Training for) ")]
    known += [re.compile(f"^{s}$") for s in SUMMARY]
    assert all(any(k.match(line) for k in known) for line in lines), [l for l in lines if not any(k.match(l) for k in known)]
    tail = lines[-6:]
    assert all(re.fullmatch(p, line) for p, line in zip(SUMMARY, tail)), tail
    # the epoch-1 eval comes at the step where the loader wrapped, after `Starting epoch 2`
    assert lines.index("Starting epoch 2") < next(i for i, l in enumerate(lines) if VAL.match(l))


def test_same_seed_same_log_different_seed_different_curve(capsys):
    _, a = run(capsys, "--seed", "7")
    b = run_proc("--seed", "7").stdout.splitlines()  # a fresh process must reproduce it too
    _, c = run(capsys, "--seed", "8")
    assert without_timings(a) == without_timings(b)
    assert val_losses(a) != val_losses(c)
    # the data (and its hash) does not depend on the seed
    assert [l for l in a if l.startswith("Mini data")] == [l for l in c if l.startswith("Mini data")]


def test_data_order_does_not_depend_on_the_seed():
    d = mini_data.build_data(30, 6)
    orders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        loader = mini_data.TrainLoader(d.train, 8, 32, "cpu", log=lambda s: None)
        orders.append([next(loader)[0] for _ in range(loader.num_steps * 2 + 1)])  # across an epoch wrap
    assert all(torch.equal(x, y) for x, y in zip(*orders))
    assert not torch.equal(orders[0][0], orders[0][loader.num_steps])  # epoch 2 is reshuffled


def test_loss_goes_down_over_epochs(capsys):
    rc, lines = run(capsys, "--num-epochs", "3")
    assert rc == 0
    initial = float(next(m.group(3) for m in map(VAL0.match, lines) if m))
    losses = val_losses(lines)
    assert len(losses) == 3 and initial > losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("variant", [["--attn", "fusion"], ["--attn", "interleaved", "--iha-p", "2"],
                                     ["--attn", "interleaved", "--iha-p", "2", "--muoneq-r"]])
def test_the_variants_train(capsys, variant):
    rc, lines = run(capsys, *variant)
    assert rc == 0
    losses = val_losses(lines)
    assert len(losses) == 2 and losses[1] < losses[0] < 4.0


def test_step_cap_stops_early_and_still_evaluates(capsys):
    rc, lines = run(capsys, "--max-steps", "3")
    assert rc == 0
    steps = [int(m.group(1)) for m in map(STEP.match, lines) if m]
    assert steps[-1] == 3
    assert "Stopping after 3 step(s) due to --max-steps" in lines
    assert [m.group(1) for m in map(VAL.match, lines) if m] == ["00003"]
    _, full = run(capsys)
    assert val_losses(lines)[-1] > min(val_losses(full))  # the handicapped run is measurably worse


# ----------------------------------------------------------------------------- real process: exit codes


def run_proc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.mini.train", *SMOKE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


BAD_INPUT = [
    (["--n-head", "3"], "does not divide"),
    (["--attn", "interleaved", "--iha-p", "0"], "--iha-p"),
    (["--short-window", "999"], "--short-window"),
    (["--attn", "interleaved", "--iha-p", "5"], "too short"),
    (["--no-such-flag"], "unrecognized"),
    (["--num-epochs", "0"], "--num-epochs"),
    (["--matrix-lr", "-1"], "--matrix-lr"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--lr", "inf"], "--lr"),
    (["--mtp-weight", "nan"], "--mtp-weight"),
    (["--batch-size", "10000"], "lower --batch-size"),  # the training split cannot fill one batch
    (["--val-docs", "1", "--seq-len", "512", "--batch-size", "1"], "raise --val-docs"),  # val shorter than a sequence
    pytest.param(["--device", "cuda"], "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")),
]


@pytest.mark.parametrize("args, words", [BAD_INPUT[0], BAD_INPUT[4]])
def test_bad_input_is_one_error_line_and_exit_2(args, words):
    p = run_proc(*args)
    assert p.returncode == 2
    assert p.stdout == ""  # rejected before anything is built or trained
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]


@pytest.mark.parametrize("args, words", BAD_INPUT)
def test_bad_input_in_process(capsys, args, words):
    try:
        rc = main([*SMOKE, *args])
    except SystemExit as e:  # argparse's own errors leave through our one-line `error` override
        rc = e.code
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]


def test_nan_loss_is_reported_as_diverged_with_exit_3():
    p = run_proc("--lr", "1e30")  # real divergence: the weights overflow within two steps
    assert p.returncode == 3
    assert re.search(r"^Diverged: non-finite loss at step \d{5}$", p.stdout, re.M)
    assert "Min val Loss" not in p.stdout


def test_non_finite_val_loss_after_the_last_step_is_diverged_too():
    # one step at an absurd LR: the step's own loss is finite, the weights it leaves behind are not;
    # the run must not end with a summary whose "Min val" is the untrained model's loss
    p = run_proc("--lr", "1e30", "--max-steps", "1")
    assert p.returncode == 3
    assert re.search(r"^Step 00001 \| Epoch 1 \| Val BPB: nan \| Val Loss: nan$", p.stdout, re.M)
    assert p.stdout.rstrip().splitlines()[-1] == "Diverged: non-finite loss at step 00001"
    assert "Min val Loss" not in p.stdout


# ----------------------------------------------------------------------------- data


def test_data_is_deterministic_and_pinned():
    d1 = mini_data.build_data(30, 6)
    mini_data.build_data.cache_clear()
    mini_data.get_encoding.cache_clear()
    d2 = mini_data.build_data(30, 6)
    assert d1.sha256 == d2.sha256 and torch.equal(d1.train, d2.train)
    # Pinned: the smoke corpus must be byte-identical on every machine and Python version.
    assert d1.sha256 == "555a42f57f92f2fd20e84e3bdddb8d73a299289757b817b6a5c0d9983f9f43a3"


def test_tokenizer_roundtrips_and_bytes_per_token():
    enc = mini_data.get_encoding()
    text = mini_data.generate_documents(2, stream=1)[0]
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text and len(ids) < len(text.encode()) / 2  # the BPE compresses
    tb = mini_data.token_bytes(enc)
    assert tb[enc.eot_token] == 0 and int(tb[ids].sum()) == len(text.encode())


def test_train_and_val_are_different_documents():
    d = mini_data.build_data(30, 6)
    assert len(d.val) > 0 and d.vocab_size == mini_data.get_encoding().n_vocab
    enc = mini_data.get_encoding()
    train_docs = set(enc.decode(d.train.tolist()).split("<|endoftext|>"))
    val_docs = set(enc.decode(d.val.tolist()).split("<|endoftext|>")) - {""}
    assert not (train_docs & val_docs)


def test_optimizer_groups_and_the_muoneq_r_flag():
    from harness.mini.model import GPT
    from harness.mini.train import build_parser, make_optimizer, resolve

    for flag, on in (([], False), (["--muoneq-r"], True)):
        s = resolve(build_parser().parse_args([*SMOKE, "--attn", "interleaved", *flag]))
        s.model.vocab_size = 61
        model = GPT(s.model)
        opt = make_optimizer(model, s)
        muon = [g for g in opt.param_groups if g["kind"] == "muon"]
        assert len(muon) == 1 and muon[0]["muoneq_r"] is on
        assert {id(p) for p in muon[0]["params"]} == {id(p) for p in model.param_groups()["matrix"]}
        adamw = {id(p) for g in opt.param_groups if g["kind"] == "adamw" for p in g["params"]}
        pg = model.param_groups()
        assert adamw == {id(p) for k in ("embed", "head", "mix") for p in pg[k]}
