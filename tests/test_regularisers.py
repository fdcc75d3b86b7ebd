"""Each regulariser's maths and hook behaviour."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regablate.models.mlp import MLPSettings, build_mlp
from regablate.nn import ModelSpec
from regablate.regularisers import build_stack
from regablate.regularisers.dropout import DropConnectLinear
from regablate.training.optim import AdamSettings, build_optimizer, decay_groups, decoupled_decay_


def mlp_with(reg: dict, norm: str = "none", hidden=(32, 16)) -> tuple[nn.Module, object]:
    stack = build_stack(reg)
    spec = stack.model_spec(ModelSpec(norm=norm))
    torch.manual_seed(0)
    return build_mlp(MLPSettings(hidden=list(hidden)), (10,), 3, spec), stack


def test_dropout_keeps_expectation_and_is_identity_in_eval():
    model, _ = mlp_with({"dropout": {"p": 0.3}})
    drops = [m for m in model if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.3, 0.3]  # after each hidden layer, not after the output
    assert isinstance(model[-1], nn.Linear)  # the output layer is last: no dropout on logits
    d = drops[0].train()
    x = torch.ones(200_000)
    y = d(x)
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout keeps E[h]
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    model.eval()
    inp = torch.randn(5, 10)
    assert torch.equal(model(inp), model(inp))


def test_dropout_per_layer_list():
    model, _ = mlp_with({"dropout": {"p": [0.1, 0.4]}})
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.1, 0.4]


def test_dropout_before_norm_position():
    stack = build_stack({"dropout": {"p": 0.2}, "batchnorm": {}})
    spec = stack.model_spec(ModelSpec())
    model = build_mlp(MLPSettings(hidden=[8], dropout_at="before_norm"), (4,), 2, spec)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Dropout", "BatchNorm1d", "ReLU", "Linear"]
    model = build_mlp(MLPSettings(hidden=[8]), (4,), 2, spec)
    assert [type(m).__name__ for m in model] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


def test_l1_gradient_is_lam_sign_w_on_weight_matrices_only():
    model, stack = mlp_with({"l1": {"lam": 0.01}})
    model.zero_grad()
    stack.penalty(model).backward()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            assert torch.allclose(p.grad, 0.01 * torch.sign(p.detach())), name
        else:
            assert p.grad is None or torch.all(p.grad == 0), name  # biases untouched


def test_l2_gradient_is_lam_w_like_coupled_weight_decay():
    model, stack = mlp_with({"l2": {"lam": 0.02}})
    model.zero_grad()
    stack.penalty(model).backward()
    for _, p in model.named_parameters():
        if p.ndim >= 2:
            assert torch.allclose(p.grad, 0.02 * p.detach())
        else:
            assert p.grad is None


def test_decoupled_decay_skips_biases_and_norm_parameters():
    model, stack = mlp_with({"weight_decay": {"lam": 0.1}, "batchnorm": {}})
    groups = stack.param_groups(model)
    decay_ids = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        is_norm = name.split(".")[0] in {str(i) for i, m in enumerate(model) if isinstance(m, nn.BatchNorm1d)}
        assert (id(p) in decay_ids) == (p.ndim >= 2 and not is_norm), name
    assert groups[0]["decoupled_decay"] == 0.1 and groups[1]["decoupled_decay"] == 0.0


class Tagger(nn.Module):
    """A custom model with an embedding table: a row per token, no unit's incoming weights."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.embed(x).mean(1))


def test_an_embedding_table_is_neither_decayed_penalised_nor_capped():
    model = Tagger()
    with torch.no_grad():
        model.embed.weight.mul_(10)  # rows of norm about 20, far above c
    table = model.embed.weight.detach().clone()
    stack = build_stack({"weight_decay": {"lam": 0.1}, "l1": {"lam": 0.01}, "l2": {"lam": 0.02},
                         "max_norm": {"c": 0.5}})
    decay, keep = stack.param_groups(model)
    assert [id(p) for p in decay["params"]] == [id(model.head.weight)]
    assert {id(p) for p in keep["params"]} == {id(model.embed.weight), id(model.head.bias)}
    model.zero_grad()
    stack.penalty(model).backward()
    assert model.embed.weight.grad is None and model.head.weight.grad is not None
    stack.after_step(model)
    assert torch.equal(model.embed.weight, table)
    assert model.head.weight.norm(dim=1).max() <= 0.5 + 1e-6


def test_decoupled_decay_matches_torch_adamw_param_groups_step_by_step():
    """reg.weight_decay with AdamW == torch AdamW with weight_decay on the decay group only."""
    model_a, stack = mlp_with({"weight_decay": {"lam": 0.05}})
    model_b, _ = mlp_with({})
    model_b.load_state_dict(model_a.state_dict())
    opt_a = build_optimizer(AdamSettings(lr=0.01), stack.param_groups(model_a))
    decay_b = [p for p in model_b.parameters() if p.ndim >= 2]
    rest_b = [p for p in model_b.parameters() if p.ndim < 2]
    opt_b = torch.optim.AdamW([{"params": decay_b, "weight_decay": 0.05},
                               {"params": rest_b, "weight_decay": 0.0}], lr=0.01)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    for _ in range(5):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if opt is opt_a:
                decoupled_decay_(decay_groups(opt))
            opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_dropconnect_masks_weights_in_training_identity_in_eval():
    model, _ = mlp_with({"dropconnect": {"p": 0.5}})
    layers = [m for m in model if isinstance(m, DropConnectLinear)]
    assert len(layers) == 3 and all(m.p == 0.5 for m in layers)
    layer = layers[0]
    x = torch.randn(4, 10)
    layer.eval()
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.train()
    torch.manual_seed(1)
    outs = torch.stack([layer(x) for _ in range(4000)])
    assert not torch.allclose(outs[0], outs[1])
    # E[W ⊙ M / (1-p)] = W: the mean output converges to the plain layer's
    assert torch.allclose(outs.mean(0), F.linear(x, layer.weight, layer.bias), atol=0.05)


def test_max_norm_bounds_each_unit_incoming_weights():
    model, stack = mlp_with({"max_norm": {"c": 0.5}})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    stack.after_step(model)
    for p in model.parameters():
        if p.ndim >= 2:
            assert torch.all(p.norm(dim=1) <= 0.5 + 1e-5)
    small, stack = mlp_with({"max_norm": {"c": 100.0}})
    before = [p.clone() for p in small.parameters()]
    stack.after_step(small)
    assert all(torch.equal(a, b) for a, b in zip(before, small.parameters()))  # inside the ball: untouched


def test_grad_clip_bounds_global_norm():
    model, stack = mlp_with({"grad_clip": {"max_norm": 0.1}})
    F.cross_entropy(model(torch.randn(64, 10) * 100), torch.randint(0, 3, (64,))).backward()
    stack.after_backward(model)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert total <= 0.1 + 1e-5


def test_label_smoothing_sets_the_training_loss():
    from regablate.training.experiment import training_loss

    stack = build_stack({"label_smoothing": {"eps": 0.2}})
    loss = training_loss("classification", stack.loss_spec().label_smoothing)
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    q = F.one_hot(y, 4) * 0.8 + 0.2 / 4
    expected = -(q * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(loss(logits, y), expected)


def test_norm_regularisers_switch_the_model_norm():
    model, _ = mlp_with({"batchnorm": {}})
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == 2
    model, _ = mlp_with({"layernorm": {}})
    assert sum(isinstance(m, nn.LayerNorm) for m in model) == 2
    model, _ = mlp_with({})
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in model)


def test_stack_order_and_names_are_sorted():
    stack = build_stack({"l2": {"lam": 1e-3}, "dropout": {"p": 0.1}})
    assert stack.names == ["dropout", "l2"]
