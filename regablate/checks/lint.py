"""Regularisation linter: silent pitfalls found in the settings, the built model and its optimiser.

The rules, as `lint`; `regablate lint [--strict] [overrides]` (regablate.cli.lint) composes the
config, builds the model and prints the findings without training; the trainer runs the same
`lint` at the start of every run and stores the findings in summary.json `warnings`. "Ahead of"
and "feeds" (RA002, RA003) follow the order in which an eval-mode forward pass calls the modules
when the input shape is known (always from `regablate lint`), else registration order. That pass is the model's first call on the data's
shape: a model whose forward fails on it (a custom model built for other inputs) is refused in
one line naming the model, the shape and the error (ModelInputError). Rules:

RA001  optim=adam with optim.weight_decay > 0: torch's Adam adds λw to the gradient before the
       adaptive scaling, so it is coupled L2 whose strength varies per parameter, not decoupled
       weight decay (Loshchilov & Hutter 2019).
RA002  a dropout-family module feeds a norm layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm)
       with no weight layer in between: the norm's statistics see the dropout noise in training
       and not in eval (variance shift, Li et al. 2019).
RA003  dropout with p > 0.1 anywhere ahead of a BatchNorm layer (not already RA002): BatchNorm's
       running variance is collected under dropout and is wrong in eval (variance shift).
       DropPath (stochastic depth) is exempt: it is the standard companion of BatchNorm in ResNets.
RA004  decay on biases or norm parameters: an optimiser group that decays parameters with
       ndim < 2 (torch's weight_decay, e.g. optim=adamw/sgd with optim.weight_decay > 0).
RA005  dropout with p >= 0.8: most units are dropped, the network underfits and trains slowly.
RA006  label smoothing together with mixup or cutmix: mixing already makes the targets soft, so
       smoothing them as well regularises the targets twice.
RA007  the same regularisation twice: two or more of optim.weight_decay, reg.l2 and
       reg.weight_decay shrink the weights at once.
RA008  trainer.objective=gap alone: a model that learns nothing has no train-val gap, so a
       search that minimises the gap rewards underfitting.
RA009  dropout on attention probabilities above 0.2 (reg.dropout.attn): transformers use about
       0.1 (ViT, BERT, GPT); more drops most of each token's context and slows training.
RA010  decay on position embeddings, a class token (a model's `no_weight_decay()` names) or an
       embedding table: shrinking them toward 0 erases what tells tokens and positions apart, not an
       over-confident weight (reg.l1, reg.l2 and reg.max_norm leave them alone).
RA011  decoupled decay too weak to act: over a whole run w shrinks by the factor Π(1 − lr_t·λ),
       so by at most lr₀·λ·T (T steps, lr_t <= lr₀ under every schedule here); below 1 %
       (AdamW's lr 1e-3 with λ = 1e-3 over a few thousand steps) its arm trains as the baseline
       does and an ablation reads "decay does nothing" where the setting never acted. Needs
       the training split's size (known when a run starts, and to `regablate lint` for the
       generated datasets).
RA002 exempts a transformer's dropout sites and DropPath (modules with a `site`) ahead of a
LayerNorm: they act on the residual stream, which a pre-norm block normalises per sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from regablate.errors import UsageError
from regablate.metrics.uncertainty import drop_rate, is_dropout

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # _NormBase: batch, instance
MIXING = ("mixup", "cutmix")
SHOW = 3  # modules named in one finding before "and N more"


@dataclass(frozen=True)
class Finding:
    id: str  # RA001 ...
    message: str  # one line: what is wrong
    fix: str  # one line: what to do instead

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _g(x: float) -> str:
    return f"{x:g}"


def _count(n: int, one: str, many: str) -> str:
    return "" if n == 0 else f"{n} {one if n == 1 else many}"


def _where(items: list[str]) -> str:
    more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def _describe(name: str, m: nn.Module) -> str:
    p = drop_rate(m)
    return f"{type(m).__name__}" + (f"(p={_g(p)})" if p is not None else "") + f" at {name}"


class ModelInputError(UsageError):
    """The model fails on inputs of the data's shape (its forward raised): one line naming the
    model, the shape and the error. It is the run's failure, found before its first epoch."""

    def __init__(self, who: str, in_shape: tuple[int, ...], error: BaseException):
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        self.who, self.in_shape = who, in_shape
        super().__init__(f"{who} fails on the data's inputs: a batch of shape {(2, *in_shape)} "
                         f"(samples of shape {in_shape}) raised {type(error).__name__}"
                         + (f": {detail}" if detail else ""))


def model_name(settings) -> str:
    """`model=mlp`, or `model=custom (pkg.mod:Class)`: the model as the config names it."""
    target = getattr(settings.model, "target", None)
    return f"model={settings.model.name}" + (f" ({target})" if target else "")


@torch.no_grad()
def _order(model: nn.Module, in_shape: tuple[int, ...] | None,
           who: str = "the model") -> list[tuple[str, nn.Module]]:
    """Leaf modules (and dropout-family modules) in the order an eval-mode forward pass of two
    zero inputs of `in_shape` calls them (first calls; modules never called are left out), or
    in registration order when `in_shape` is None. A model that fails on those inputs raises
    ModelInputError naming `who`."""
    leaves = [(n, m) for n, m in model.named_modules() if n and (not any(m.children()) or is_dropout(m))]
    if in_shape is None:
        return leaves
    called: dict[str, nn.Module] = {}

    def record(name: str, module: nn.Module) -> None:  # a pre-hook's return value replaces the input
        called.setdefault(name, module)

    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: record(n, m)) for n, m in leaves]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            model(torch.zeros(2, *in_shape, device=device))
        except Exception as e:  # noqa: BLE001 — the first call of the model on the data's shape
            raise ModelInputError(who, tuple(in_shape), e) from None
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return list(called.items())


@torch.no_grad()
def check_output(model: nn.Module, in_shape: tuple[int, ...], out_dim: int, who: str) -> None:
    """A model's eval-mode output on two zero inputs of `in_shape` must be one tensor of shape
    (2, out_dim): the loss and every metric read it so. Another shape (a regression model's
    (B,) broadcasts against (B, 1) targets into a B×B loss) or a tuple is a ModelInputError. The
    RNG (CPU, and the model's CUDA device) is left as it was."""
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                out = model(torch.zeros(2, *in_shape, device=device))
            except Exception as e:  # noqa: BLE001 — the model's own failure, said as the lint says it
                raise ModelInputError(who, tuple(in_shape), e) from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (2, out_dim):
        return
    got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
    raise ModelInputError(who, tuple(in_shape), ValueError(
        f"it returned {got}; the loss and metrics need one tensor of shape (2, {out_dim}): "
        f"(batch, {out_dim} outputs or class logits)"))


def _rates(p: float | list[float] | None) -> list[float]:
    return [] if p is None else p if isinstance(p, list) else [p]


def _weight_layer(m: nn.Module) -> bool:
    return any(p.ndim >= 2 for p in m.parameters(recurse=False))


def _active(m: nn.Module) -> bool:
    p = drop_rate(m)
    return p is None or p > 0


def _dropout_vs_norm(model: nn.Module, in_shape: tuple[int, ...] | None, who: str) -> list[Finding]:
    """RA002 (dropout straight into a norm) and RA003 (dropout > 0.1 ahead of BatchNorm)."""
    order = _order(model, in_shape, who)
    direct, ahead = [], []
    for i, (name, m) in enumerate(order):
        if not is_dropout(m) or not _active(m):
            continue
        nxt = next(((n, o) for n, o in order[i + 1:] if isinstance(o, NORMS) or _weight_layer(o)), None)
        if nxt is not None and isinstance(nxt[1], nn.LayerNorm) and getattr(m, "site", None):
            continue  # RA002 exemption: a transformer's residual stream into a pre-norm block
        if nxt is not None and isinstance(nxt[1], NORMS):
            direct.append(f"{_describe(name, m)} -> {type(nxt[1]).__name__} at {nxt[0]}")
            continue
        p = drop_rate(m)
        if p is None or p <= 0.1 or type(m).__name__.startswith("DropPath"):
            continue
        bn = next(((n, o) for n, o in order[i + 1:] if isinstance(o, nn.modules.batchnorm._BatchNorm)), None)
        if bn is not None:
            ahead.append(f"{_describe(name, m)} before {type(bn[1]).__name__} at {bn[0]}")
    out = []
    if direct:
        out.append(Finding(
            "RA002", f"dropout feeds a norm layer directly: {_where(direct)}; the norm's statistics "
            "differ between training and eval (variance shift)",
            "put dropout after the norm and activation (model.dropout_at=after_act), "
            "or after the last norm layer"))
    if ahead:
        out.append(Finding(
            "RA003", f"dropout p > 0.1 ahead of BatchNorm: {_where(ahead)}; BatchNorm's running "
            "variance is collected under dropout and is off in eval (variance shift)",
            "keep dropout after the last BatchNorm (e.g. only before the output layer), "
            "use p <= 0.1, or drop one of dropout and BatchNorm"))
    return out


def _decay_on_1d(model: nn.Module, groups: list[dict], s) -> list[Finding]:
    """RA004: parameter groups that decay biases or norm parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS)
                   for p in m.parameters(recurse=False)}
    biases, norms, sources = [], [], []
    for g in groups:
        wd, dd = g.get("weight_decay") or 0.0, g.get("decoupled_decay") or 0.0
        if wd <= 0 and dd <= 0:
            continue
        flat = [p for p in g["params"] if p.ndim < 2]
        if not flat:
            continue
        sources.append(f"optim.weight_decay={_g(wd)}" if wd > 0 else f"decoupled_decay={_g(dd)}")
        for p in flat:
            (norms if id(p) in norm_params else biases).append(names.get(id(p), "?"))
    if not biases and not norms:
        return []
    what = " and ".join(x for x in (_count(len(biases), "bias", "biases"),
                                    _count(len(norms), "norm parameter", "norm parameters")) if x)
    return [Finding(
        "RA004", f"{' and '.join(dict.fromkeys(sources))} also decays {what} "
        f"(e.g. {_where((norms + biases)[:SHOW])})",
        "set optim.weight_decay=0 and use +reg=weight_decay (decay on weight matrices only)")]


def _transformer(model: nn.Module, groups: list[dict], s) -> list[Finding]:
    """RA009 (attention dropout above 0.2) and RA010 (decay on position embeddings, class token, embeddings)."""
    from regablate.regularisers.base import not_weights

    out = []
    attn = [_describe(n, m) for n, m in model.named_modules()
            if getattr(m, "site", None) == "attn" and (drop_rate(m) or 0.0) > 0.2]
    if attn:
        out.append(Finding(
            "RA009", f"dropout on attention probabilities above 0.2: {_where(attn)}; transformers "
            "use about 0.1 (ViT, BERT, GPT), more drops most of each token's context",
            "set reg.dropout.attn to 0.1 or less (and regularise with +reg=droppath instead)"))
    skip = not_weights(model)
    params = {id(p): n for n, p in model.named_parameters() if n in skip}
    if not params:
        return out
    sources, hit = [], []
    for g in groups:
        wd, dd = g.get("weight_decay") or 0.0, g.get("decoupled_decay") or 0.0
        found = [params[id(p)] for p in g["params"] if id(p) in params]
        if found and (wd > 0 or dd > 0):
            sources.append(f"optim.weight_decay={_g(wd)}" if wd > 0 else f"decoupled_decay={_g(dd)}")
            hit += found
    if sources:
        out.append(Finding(
            "RA010", f"{' and '.join(dict.fromkeys(sources))} decays the position embeddings, class token or "
            f"embedding table ({_where(list(dict.fromkeys(hit)))}); shrinking them erases what tells tokens and positions apart",
            "set optim.weight_decay=0 and use +reg=weight_decay (it skips them, with norms and biases)"))
    return out


WEAK_DECAY = 0.01  # RA011: decay that shrinks the weights by less than this over a whole run


def _weak_decay(groups: list[dict], s, n_train: int | None) -> list[Finding]:
    """RA011: decoupled decay whose whole-run shrink lr₀·λ·T is below WEAK_DECAY."""
    if not n_train:
        return []
    t = s.trainer
    bs = min(t.batch_size, n_train)  # as the training loop batches (a last batch of one left out)
    steps = t.max_epochs * (math.ceil(n_train / bs) - (n_train % bs == 1 and n_train > bs))
    out = []
    for g in groups:
        rates = [("reg.weight_decay.lam", g.get("decoupled_decay") or 0.0)]
        if s.optim.name == "adamw":  # torch's AdamW decays decoupled too
            rates.append(("optim.weight_decay", g.get("weight_decay") or 0.0))
        for key, lam in rates:
            lr = max(g["lr"], getattr(s.sched, "min_lr", 0.0) if s.sched.name == "cosine" else 0.0)
            bound = lr * lam * steps  # the lr never rises above its start, but to a cosine's min_lr
            if lam > 0 and bound < WEAK_DECAY and not any(key in f.message for f in out):
                enough = float(f"{0.1 / (lr * steps):.2g}")  # a 10% shrink at most
                out.append(Finding(
                    "RA011", f"{key}={_g(lam)} at {'optim.lr' if lr == g['lr'] else 'sched.min_lr'}={_g(lr)} shrinks the weights by at most "
                    f"{100 * bound:.2g}% over the whole run (lr·λ·T, T = trainer.max_epochs={t.max_epochs} × "
                    f"{steps // t.max_epochs} steps): too weak to act, its arm trains as the baseline does",
                    f"raise {key} to about {_g(enough)} or more (at most a 10% shrink), "
                    "or drop it"))
    return out


def lint(settings, model: nn.Module, groups: list[dict],
         in_shape: tuple[int, ...] | None = None, n_train: int | None = None) -> list[Finding]:
    """The findings for a run's typed settings (as `regablate.training.settings.load_settings`
    returns them), its built model and its optimiser's parameter groups (`optimizer.param_groups`,
    or for a model without an optimiser `regablate.training.optim.held_groups` of the settings and
    the stack).
    With the model's input shape `in_shape` (no batch dimension), module order is the forward
    order of a pass on zeros, else registration order; a model that fails on those zeros raises
    ModelInputError (one line: the model, the shape, the error). `n_train`, the training split's
    size, lets RA011 count the run's steps. Empty for a clean stack."""
    s, stack = settings, settings.stack
    wd = getattr(s.optim, "weight_decay", 0.0)
    out: list[Finding] = []
    if s.optim.name == "adam" and wd > 0:
        out.append(Finding(
            "RA001", f"optim=adam with optim.weight_decay={_g(wd)} is coupled L2 rescaled by Adam's "
            "per-parameter step sizes, not decoupled weight decay",
            "use optim=adamw with optim.weight_decay=0 and +reg=weight_decay (decoupled), "
            "or +reg=l2 if you mean coupled L2"))
    out += _dropout_vs_norm(model, in_shape, model_name(s))
    out += _decay_on_1d(model, groups, s)
    out += _transformer(model, groups, s)
    out += _weak_decay(groups, s, n_train)
    high = [_describe(n, m) for n, m in model.named_modules()
            if is_dropout(m) and (drop_rate(m) or 0.0) >= 0.8]
    if high:
        keys = [f"reg.{r.key}.p" for r in stack.regs
                if any(v >= 0.8 for v in _rates(getattr(r.s, "p", None)))]
        out.append(Finding(
            "RA005", f"dropout p >= 0.8: {_where(high)}; most units are dropped, so the network "
            "underfits and learns slowly", f"lower {' and '.join(keys) or 'the drop rate'} to 0.5 or less"))
    smoothing = stack["label_smoothing"]
    mixing = [n for n in MIXING if stack[n] is not None]
    if smoothing is not None and getattr(smoothing.s, "eps", 0.0) > 0 and mixing:
        out.append(Finding(
            "RA006", f"reg.label_smoothing (eps={_g(smoothing.s.eps)}) with reg.{' and reg.'.join(mixing)}: "
            "mixing already makes the targets soft, so smoothing them again regularises the targets twice",
            "drop reg.label_smoothing (or keep it and drop the mixing)"))
    shrink = []
    if wd > 0:
        kind = "decoupled" if s.optim.name == "adamw" else "coupled L2"
        shrink.append(f"optim.weight_decay={_g(wd)} ({kind}, all parameters)")
    if stack["l2"] is not None and stack["l2"].s.lam > 0:
        shrink.append(f"reg.l2 (lam={_g(stack['l2'].s.lam)}, coupled L2)")
    if stack["weight_decay"] is not None and stack["weight_decay"].s.lam > 0:
        shrink.append(f"reg.weight_decay (lam={_g(stack['weight_decay'].s.lam)}, decoupled)")
    if len(shrink) > 1:
        out.append(Finding(
            "RA007", "the weights are shrunk twice: " + "; ".join(shrink),
            "keep one: +reg=weight_decay with optim.weight_decay=0 (decoupled), or +reg=l2 alone"))
    if str(getattr(s.trainer, "objective", "")).strip() == "gap":
        out.append(Finding(
            "RA008", "trainer.objective=gap alone rewards underfitting: a model that learns nothing "
            "has no train-val gap", "tune val_loss or val_metric, or a sum such as val_loss+0.5*gap"))
    return sorted(out, key=lambda f: f.id)


def format_findings(findings: list[Finding]) -> str:
    """Two lines per finding: `RA001  what is wrong` / `       fix: ...`."""
    return "".join(f"{f.id}  {f.message}\n{' ' * (len(f.id) + 2)}fix: {f.fix}\n" for f in findings)
