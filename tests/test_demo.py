"""The moons demo: its data, its loss and training loop (against micrograd's), and the command."""

import io
import math
import os
import random
import re
import subprocess
import sys

import micrograd.engine
import micrograd.nn
import pytest

from opgraph.demo import (
    ProgressBar,
    Step,
    draw_neuron,
    evaluate,
    learning_rate,
    loss,
    make_moons,
    train,
)
from opgraph.nn import MLP

# --- the data --------------------------------------------------------------------------------


def test_make_moons_without_noise_lies_on_two_half_circles():
    X, y = make_moons(101, noise=0.0, seed=0)
    assert len(X) == len(y) == 101 and all(len(row) == 2 for row in X)
    assert y.count(-1) == 50 and y.count(1) == 51
    for (a, b), label in zip(X, y, strict=True):
        if label == -1:  # upper moon: unit half circle around (0, 0), above the x axis
            assert a * a + b * b == pytest.approx(1.0) and b >= -1e-12
        else:  # lower moon: unit half circle around (1, 0.5), below its centre
            assert (a - 1) ** 2 + (b - 0.5) ** 2 == pytest.approx(1.0) and b <= 0.5 + 1e-12
    for end in [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [2.0, 0.5]]:  # the ends of both moons
        assert any(row == pytest.approx(end, abs=1e-12) for row in X), end


def test_make_moons_is_shuffled_noisy_and_seeded():
    X, y = make_moons(100, noise=0.1, seed=1)
    assert (X, y) == make_moons(100, noise=0.1, seed=1)
    assert X != make_moons(100, noise=0.1, seed=2)[0]
    assert y[:50] != [-1] * 50  # shuffled
    clean = dict(zip(map(tuple, make_moons(100, noise=0.0, seed=1)[0]), y, strict=True))
    offsets = [math.dist(row, point) for row, point in zip(X, clean, strict=True)]
    assert 0.05 < sum(offsets) / len(offsets) < 0.25  # about noise * sqrt(pi / 2)


# --- the loss and the training loop, against micrograd's demo notebook -----------------------


def micrograd_loss(model, X, y):
    """The loss of micrograd's demo.ipynb, as written there (without numpy)."""
    inputs = [list(map(micrograd.engine.Value, row)) for row in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    alpha = 1e-4
    reg_loss = alpha * sum(p * p for p in model.parameters())
    total_loss = data_loss + reg_loss
    accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(y, scores, strict=True)]
    return total_loss, sum(accuracy) / len(accuracy)


def test_loss_and_training_match_micrograds_demo_step_for_step():
    X, y = make_moons(20, noise=0.1, seed=3)
    random.seed(4)
    theirs = micrograd.nn.MLP(2, [6, 6, 1])
    random.seed(4)
    ours = MLP(2, [6, 6, 1])
    steps = 4
    their_history = []
    for k in range(steps):  # micrograd's notebook loop
        total_loss, acc = micrograd_loss(theirs, X, y)
        theirs.zero_grad()
        total_loss.backward()
        for p in theirs.parameters():
            p.data -= (1.0 - 0.9 * k / steps) * p.grad
        their_history.append((total_loss.data, acc))
    seen = []
    history = train(ours, X, y, steps, on_step=seen.append)
    assert seen == history and [s.index for s in history] == list(range(steps))
    assert [s.loss for s in history] == pytest.approx([h[0] for h in their_history], rel=1e-12)
    assert [s.accuracy for s in history] == [h[1] for h in their_history]
    ours_after = [p.data for p in ours.parameters()]
    assert ours_after == pytest.approx([p.data for p in theirs.parameters()], rel=1e-12)
    final_loss, final_accuracy = evaluate(ours, X, y)
    their_loss, their_accuracy = micrograd_loss(theirs, X, y)
    assert final_loss == pytest.approx(their_loss.data, rel=1e-12)
    assert final_accuracy == their_accuracy


def test_learning_rate_follows_micrograds_schedule():
    assert [learning_rate(k, 100) for k in (0, 50, 99)] == pytest.approx([1.0, 0.55, 0.109])
    assert learning_rate(0, 3) == 1.0 and learning_rate(2, 3) == pytest.approx(0.4)


def test_training_reduces_the_loss_and_reaches_full_accuracy_on_a_small_problem():
    X, y = make_moons(30, noise=0.05, seed=0)
    model = MLP(2, [8, 8, 1], rng=random.Random(0))
    history = train(model, X, y, steps=60)
    final_loss, accuracy = evaluate(model, X, y)
    assert final_loss < history[0].loss / 3
    assert accuracy == 1.0


def test_train_accepts_a_replacement_loss_function():
    X, y = make_moons(6, seed=0)
    calls = []

    def counting_loss(model, X, y):
        calls.append(len(X))
        return loss(model, X, y, alpha=0.0)

    train(MLP(2, [2, 1]), X, y, steps=3, loss_fn=counting_loss)
    assert calls == [6, 6, 6]


def test_evaluate_records_no_graph():
    X, y = make_moons(6, seed=0)
    model = MLP(2, [3, 1])
    with_graph, _ = loss(model, X, y)
    assert with_graph.parents
    value, accuracy = evaluate(model, X, y)
    assert value == pytest.approx(with_graph.data) and 0 <= accuracy <= 1


def test_a_model_with_several_outputs_is_refused_with_a_reason():
    X, y = make_moons(4, seed=0)
    with pytest.raises(ValueError, match="must have one output, this one has 2"):
        loss(MLP(2, [3, 2]), X, y)


def test_draw_neuron_without_points_says_so(tmp_path):
    with pytest.raises(ValueError, match="needs at least one input point"):
        draw_neuron(MLP(2, [3, 1]), [], tmp_path / "neuron.svg")


# --- the progress bar ------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def report(bar, steps):
    for k in range(steps):
        bar(Step(k, steps, loss=1.0 / (k + 1), accuracy=k / steps, learning_rate=0.5))


def test_progress_bar_prints_a_line_per_tenth_when_not_on_a_terminal():
    out = io.StringIO()
    report(ProgressBar(100, out), 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("step   1/100 [")
    assert lines[-1].startswith("step 100/100 [" + "#" * 30 + "]")
    assert "loss 0.0100" in lines[-1] and "accuracy  99.0%" in lines[-1]


def test_progress_bar_redraws_in_place_on_a_terminal():
    out = Terminal()
    report(ProgressBar(5, out, width=10), 5)
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "step 3/5 [######....]" in text


# --- the command -----------------------------------------------------------------------------


def opgraph_demo(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "opgraph", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_full_demo_reaches_100_percent_and_draws_a_neuron(tmp_path):
    """The README's claim, with the demo's own defaults: 100 steps of MLP(2, [16, 16, 1])."""
    result = opgraph_demo("--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "MLP(2, [16, 16, 1]) (337 parameters) on 100 two-moons points for 100 steps" in (
        result.stdout
    )
    final = re.search(r"final loss (\d+\.\d+), accuracy (\d+)%", result.stdout)
    assert final and final.group(2) == "100" and float(final.group(1)) < 0.05
    assert "step 100/100 [" in result.stderr
    svg = tmp_path / "out" / "neuron.svg"
    assert f"drew the graph of neuron L0.N0: {svg}" in result.stdout
    text = svg.read_text()
    for label in ["L0.N0.w0", "L0.N0.w1", "L0.N0.b", "x0", "x1", "ReLU", "L0.N0"]:
        assert f">{label}<" in text


def test_demo_without_graphviz_says_how_to_install_it_and_succeeds(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    result = opgraph_demo("--steps", "2", "--seed", "5", "--out", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "final loss" in result.stdout and "accuracy" in result.stdout
    assert "apt-get install graphviz" in result.stdout
    assert not (tmp_path / "neuron.svg").exists()


def test_demo_rejects_bad_options():
    result = opgraph_demo("--steps", "0")
    assert result.returncode == 2 and "--steps: must be at least 1, got 0" in result.stderr
    result = opgraph_demo("--seed", "x")
    assert result.returncode == 2 and "--seed" in result.stderr


def test_demo_refuses_an_output_directory_it_cannot_create_before_training(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = opgraph_demo("--out", str(tmp_path / "a-file" / "svg"))
    assert result.returncode == 2
    assert f"--out {tmp_path / 'a-file' / 'svg'}: cannot create the directory" in result.stderr
    assert "training" not in result.stdout  # it stopped before training
