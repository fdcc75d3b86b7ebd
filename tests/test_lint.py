"""Each lint rule fires on its case and stays quiet on clean configs; the `lint` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from regablate.checks.lint import Finding, ModelInputError, format_findings, lint
from regablate.cli.lint import lint_inputs as build_model
from regablate.cli.lint import main
from regablate.config.compose import compose_config
from regablate.config.paths import CONF_DIR
from regablate.training.experiment import build_experiment
from regablate.training.optim import held_groups
from regablate.training.settings import load_settings

# Presets for dense models; each must lint clean on the default MLP.
MLP_PRESETS = ["none", "batchnorm", "batchnorm_l2", "dropconnect", "dropout", "dropout_l2",
               "grad_clip", "l1", "l2", "label_smoothing", "layernorm", "max_norm", "weight_decay"]
# Presets for recurrent models only (model=lstm, model=gru); each must lint clean on the LSTM.
RECURRENT_PRESETS = ["variational_dropout", "weight_drop"]
# Every other preset must lint clean on the CIFAR ResNet (which takes all of them).
ALL_PRESETS = sorted(p.stem for p in Path(CONF_DIR, "reg").glob("*.yaml") if p.stem not in RECURRENT_PRESETS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models built here are tiny or run once on two inputs: threads would only contend."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def settings_for(*overrides: str):
    return load_settings(compose_config(overrides))


def findings(*overrides: str) -> list[Finding]:
    s = settings_for(*overrides)
    return lint(s, *build_model(s))


def groups_of(s, model: nn.Module) -> list[dict]:
    """The parameter groups an optimiser of `s` would hold for `model`."""
    return held_groups(s.optim, s.stack.param_groups(model))


def ids(*overrides: str) -> list[str]:
    return [f.id for f in findings(*overrides)]


@pytest.mark.parametrize("overrides", [(), ("optim=adam",), ("optim=sgd",), ("sched=cosine",),
                                       ("dataset=sine",), ("dataset=tiny_binary",),
                                       ("+reg=[dropout,l1,max_norm]",), ("model.norm=batch",),
                                       ("+reg=[dropout,batchnorm]", "reg.dropout.p=0.1"),
                                       ("+reg=[dropout,layernorm]",)])
def test_clean_configs_have_no_findings(overrides):
    assert findings(*overrides) == []


@pytest.mark.parametrize("preset", MLP_PRESETS)
def test_presets_have_no_findings_on_the_mlp(preset):
    assert findings(f"+reg={preset}") == []


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_presets_have_no_findings_on_the_resnet(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("REGABLATE_DATA", str(tmp_path))  # linting never needs the data on disk
    norm = ["model.norm=none"] if preset == "layernorm" else []  # it refuses a second norm
    small = ["model.depth=8", "model.width=8"]  # one block per stage is enough for the rules
    assert findings("dataset=cifar10", "model=resnet", *small, *norm, f"+reg={preset}") == []


@pytest.mark.parametrize("preset", [*RECURRENT_PRESETS, "none", "dropout", "l2", "weight_decay"])
def test_presets_have_no_findings_on_the_lstm(preset):
    assert findings("dataset=sine_sequence", "model=lstm", f"+reg={preset}") == []


def test_ra001_adam_with_weight_decay():
    assert "RA001" in ids("optim=adam", "optim.weight_decay=1e-4")
    assert "RA001" not in ids("optim=adamw", "optim.weight_decay=1e-4")
    assert "RA001" not in ids("optim=sgd", "optim.weight_decay=1e-4")


def test_ra002_dropout_straight_into_a_norm():
    for norm in ("batchnorm", "layernorm"):
        assert ids(f"+reg=[dropout,{norm}]", "model.dropout_at=before_norm") == ["RA002"]
    assert ids("+reg=[dropout]", "model.dropout_at=before_norm") == []  # no norm to shift
    assert ids("+reg=[dropconnect,batchnorm]", "reg.dropconnect.p=0.05") == ["RA002"]


def test_ra003_dropout_ahead_of_batchnorm():
    assert ids("+reg=[dropout,batchnorm]") == ["RA003"]
    assert ids("+reg=[dropout,batchnorm]", "reg.dropout.p=[0.5,0.1]") == ["RA003"]
    # only the last hidden layer drops: after the last BatchNorm, the recommended place
    assert ids("+reg=[dropout,batchnorm]", "reg.dropout.p=[0.0,0.5]") == []
    assert ids("+reg=[dropout,layernorm]") == []


def test_ra004_decay_on_biases_and_norm_parameters():
    assert ids("optim.weight_decay=1e-2") == ["RA004"]
    assert ids("optim=sgd", "optim.weight_decay=1e-2") == ["RA004"]
    (f,) = findings("optim.weight_decay=1e-2", "+reg=batchnorm")
    assert "3 biases" in f.message and "4 norm parameters" in f.message
    assert ids("+reg=weight_decay") == []  # decoupled, on weight matrices only


def test_ra005_dropout_rate_too_high():
    assert ids("+reg=dropout", "reg.dropout.p=0.8") == ["RA005"]
    assert ids("+reg=dropconnect", "reg.dropconnect.p=0.9") == ["RA005"]
    assert ids("+reg=dropout", "reg.dropout.p=0.7") == []


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_ra006_label_smoothing_with_mixing(mixing):
    images = ("dataset=cifar10", "model=convnet") if mixing == "cutmix" else ()  # cutmix cuts images
    assert ids(f"+reg=[label_smoothing,{mixing}]", *images) == ["RA006"]
    assert ids(f"+reg=[label_smoothing,{mixing}]", "reg.label_smoothing.eps=0", *images) == []
    assert ids(f"+reg={mixing}", *images) == [] and ids("+reg=label_smoothing", *images) == []


def test_ra007_the_same_shrinkage_twice():
    assert ids("optim.weight_decay=1e-2", "+reg=weight_decay") == ["RA004", "RA007"]
    assert ids("+reg=[l2,weight_decay]") == ["RA007"]
    assert ids("optim=sgd", "optim.weight_decay=1e-3", "+reg=l2") == ["RA004", "RA007"]
    assert ids("+reg=[l2,weight_decay]", "reg.l2.lam=0") == []
    assert ids("+reg=[l1,l2]") == []  # elastic net: two different penalties


def test_ra011_decay_too_weak_to_act():
    # sparse_synthetic: 1,400 training rows, batch 64 -> 22 steps an epoch, 100 epochs: T = 2,200
    (f,) = findings("+reg=weight_decay", "reg.weight_decay.lam=1e-3")
    assert f.id == "RA011" and f.message.startswith(
        "reg.weight_decay.lam=0.001 at optim.lr=0.001 shrinks the weights by at most 0.22% over the whole run "
        "(lr·λ·T, T = trainer.max_epochs=100 × 22 steps)")
    assert f.fix.startswith("raise reg.weight_decay.lam to about 0.045 or more")
    assert ids("+reg=weight_decay", "reg.weight_decay.lam=0.045") == []  # 9.9 % at most: acts
    assert ids("+reg=weight_decay", "reg.weight_decay.lam=1e-3", "optim.lr=0.01") == []  # lr·λ·T = 2.2 %
    assert ids("+reg=weight_decay", "reg.weight_decay.lam=1e-3", "trainer.max_epochs=10") == ["RA011"]
    # a cosine schedule can end above its start: the bound takes its min_lr then
    assert ids("+reg=weight_decay", "reg.weight_decay.lam=1e-3", "sched=cosine", "sched.min_lr=0.01") == []
    assert "sched.min_lr=0.002 shrinks" in findings("+reg=weight_decay", "reg.weight_decay.lam=1e-3", "sched=cosine",
                                                    "sched.min_lr=0.002")[0].message
    assert ids("optim.weight_decay=1e-3") == ["RA004", "RA011"]  # torch's AdamW decays decoupled too
    assert "optim.weight_decay=0.001 at optim.lr=0.001" in findings("optim.weight_decay=1e-3")[1].message
    assert ids("optim=adam", "optim.weight_decay=1e-3") == ["RA001", "RA004"]  # coupled: another matter
    s = settings_for("+reg=weight_decay", "reg.weight_decay.lam=1e-3")
    model, groups, shape, n_train = build_model(s)
    assert n_train == 1400 and lint(s, model, groups, shape) == []  # without the split's size: no RA011


def test_findings_are_one_line_each_with_a_fix():
    fs = findings("optim=adam", "optim.weight_decay=1e-4", "+reg=[dropout,batchnorm,weight_decay]",
                  "reg.dropout.p=0.9", "model.dropout_at=before_norm")
    assert [f.id for f in fs] == ["RA001", "RA002", "RA004", "RA005", "RA007"]
    for f in fs:
        assert f.message and f.fix and "\n" not in f.message + f.fix
        assert f.as_dict() == {"id": f.id, "message": f.message, "fix": f.fix}
    text = format_findings(fs)
    assert text.count("\n") == 2 * len(fs)
    assert text.startswith("RA001  optim=adam") and "\n       fix: use optim=adamw" in text


def test_lint_of_a_built_experiment_matches_the_command():
    s = settings_for("optim.weight_decay=1e-2", "+reg=[dropout,batchnorm]")
    x = build_experiment(s)
    expected = lint(s, *build_model(s))
    assert [f.id for f in expected] == ["RA003", "RA004"]
    assert lint(x.s, x.model, x.optimizer.param_groups, x.data.in_shape) == expected
    assert lint(x.s, x.model, x.optimizer.param_groups) == expected  # registration order is forward order here


class Shuffled(nn.Module):
    """Registered as norm, dropout, linear; called as linear -> dropout -> norm."""

    def __init__(self):
        super().__init__()
        self.norm, self.drop, self.lin = nn.BatchNorm1d(4), nn.Dropout(0.05), nn.Linear(3, 4)

    def forward(self, x):
        return self.norm(self.drop(self.lin(x)))


def test_with_the_input_shape_module_order_is_the_forward_order():
    s = settings_for()
    model = Shuffled()
    model.train()
    assert [f.id for f in lint(s, model, groups_of(s, model))] == []  # registration order: dropout -> linear
    (f,) = lint(s, model, groups_of(s, model), in_shape=(3,))
    assert f.id == "RA002" and "Dropout(p=0.05) at drop -> BatchNorm1d at norm" in f.message
    assert model.training and model.norm.training  # modes restored after the traced pass


def test_a_model_that_fails_on_the_datas_shape_is_one_line_naming_it():
    s = settings_for("model.hidden=[8]")
    model = nn.Sequential(nn.Linear(7, 2))
    with pytest.raises(ModelInputError) as e:
        lint(s, model, groups_of(s, model), in_shape=(5,))
    assert str(e.value) == ("model=mlp fails on the data's inputs: a batch of shape (2, 5) (samples of shape (5,)) "
                            "raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 7x2)")
    assert lint(s, model, groups_of(s, model)) == []  # without the shape nothing is called


def test_command_clean(capsys):
    assert main([]) == 0
    assert main(["--strict", "+reg=dropout"]) == 0
    assert capsys.readouterr().out.splitlines() == ["no findings", "no findings"]


def test_command_findings_and_strict(capsys):
    assert main(["optim=adam", "optim.weight_decay=1e-4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("RA001  ") and "fix: " in out and "2 findings" in out
    assert main(["--strict", "optim=adam", "optim.weight_decay=1e-4"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["trainer.max_epochs=0"], "regablate: error: invalid config: trainer.max_epochs=0: must be > 0"),
    (["+reg=nonexistent"], "regablate: error: In 'config': Could not find 'reg/nonexistent'"),
    (["nokey=1"], "regablate: error: Could not override 'nokey'"),
    (["-m"], "regablate: error: lint takes --strict and overrides"),
])
def test_command_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


@pytest.mark.parametrize("argv, said", [
    (["+reg=augment"], "invalid config: reg.augment='on': needs image inputs"),
    (["model=custom", "model.target=custom_models:SqueezedRegressor", "dataset=sine"],
     "it returned a tensor of shape (2,); the loss and metrics need one tensor of shape (2, 1)"),
])
def test_lint_refuses_what_the_run_refuses(capsys, argv, said):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
