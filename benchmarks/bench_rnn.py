"""LSTM training-step time: regablate's model=lstm against the same model written by hand in
plain PyTorch, for each recurrent regulariser.

One step = forward, MSE loss, backward, Adam step on a (batch, length, 1) window batch (the
sine_sequence shapes), LSTM 1-H-H and a Linear head on the last step. regablate's model comes
from the real config (`dataset=sine_sequence model=lstm +reg=...`, built by the trainer's own
`build_experiment`); the hand-written counterparts are what one would write without regablate:

  none                 nn.LSTM(num_layers=2) + Linear (torch's fused kernel)
  dropout (naive)      the same with nn.LSTM(dropout=p) between the layers, F.dropout on input and output
  weight_drop          two one-layer nn.LSTMs, weight_hh dropped per forward via torch.func.functional_call
  variational_dropout  two nn.LSTMCell loops, one mask per sequence on inputs, h and outputs

Both sides run interleaved in the same process, `--steps` timed steps each after warm-up, the
median of `--repeats` rounds reported; the ratio is regablate / plain (1.00 = no overhead).

    python benchmarks/bench_rnn.py [--hidden 64] [--length 20] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

P = 0.25  # every drop rate (weight drop: 0.5, AWD-LSTM's)
WD = 0.5


class PlainLSTM(nn.Module):
    """The hand-written model: the fused nn.LSTM, or a cell loop where a hidden mask needs one."""

    def __init__(self, kind: str, hidden: int, layers: int = 2):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        if kind in ("none", "dropout"):
            self.lstm = nn.LSTM(1, hidden, num_layers=layers, batch_first=True,
                                dropout=P if kind == "dropout" else 0.0)
        elif kind == "weight_drop":
            self.lstms = nn.ModuleList(nn.LSTM(1 if k == 0 else hidden, hidden, batch_first=True)
                                       for k in range(layers))
        else:
            self.cells = nn.ModuleList(nn.LSTMCell(1 if k == 0 else hidden, hidden) for k in range(layers))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        if self.kind == "none":
            return self.head(self.lstm(x)[0][:, -1])
        if self.kind == "dropout":  # nn.LSTM's own dropout between layers, F.dropout on input and output
            out = self.lstm(F.dropout(x, P, self.training))[0]
            return self.head(F.dropout(out[:, -1], P, self.training))
        if self.kind == "weight_drop":
            out = x
            for lstm in self.lstms:
                params = dict(lstm.named_parameters())
                params["weight_hh_l0"] = F.dropout(lstm.weight_hh_l0, WD, self.training)
                out = torch.func.functional_call(lstm, params, (out,))[0]
            return self.head(out[:, -1])
        out = x
        for cell in self.cells:  # variational: one mask per sequence for input, h, output
            B = out.shape[0]
            m_in = torch.empty(B, out.shape[-1]).bernoulli_(1 - P) / (1 - P)
            m_h = torch.empty(B, self.hidden).bernoulli_(1 - P) / (1 - P)
            h = c = out.new_zeros(B, self.hidden)
            steps = []
            for t in range(out.shape[1]):
                h, c = cell(out[:, t] * m_in, (h * m_h, c))
                steps.append(h)
            out = torch.stack(steps, 1)
        m_out = torch.empty(out.shape[0], self.hidden).bernoulli_(1 - P) / (1 - P)
        return self.head(out[:, -1] * m_out)


REGS = {"none": "+reg=none", "dropout": f"+reg=dropout reg.dropout.p={P}",
        "weight_drop": f"+reg=weight_drop reg.weight_drop.p={WD}",
        "variational_dropout": f"+reg=variational_dropout reg.variational_dropout.p_in={P} "
                               f"reg.variational_dropout.p_hidden={P} reg.variational_dropout.p_out={P}"}


def regablate_model(kind: str, hidden: int, length: int):
    from regablate.config.compose import compose_config
    from regablate.training.experiment import build_experiment
    from regablate.training.settings import load_settings

    cfg = compose_config(["dataset=sine_sequence", "model=lstm", f"model.hidden={hidden}",
                          f"dataset.length={length}", "trainer.device=cpu", *REGS[kind].split()])
    x = build_experiment(load_settings(cfg))
    return x.model, x.optimizer


def step_time(model, opt, x, y, steps: int) -> float:
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch_size, args.length, 1), torch.randn(args.batch_size, 1)
    print(f"LSTM 1-{args.hidden}-{args.hidden} + Linear, batch {args.batch_size} x {args.length} steps, "
          f"Adam, CPU, {args.threads} thread(s); median of {args.repeats} x {args.steps} steps")
    print(f"{'regulariser':22s} {'regablate ms':>12s} {'plain ms':>9s} {'ratio':>6s}")
    for kind in REGS:
        ours, ours_opt = regablate_model(kind, args.hidden, args.length)
        plain = PlainLSTM(kind, args.hidden)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in plain.parameters())
        step_time(ours, ours_opt, x, y, 3)
        step_time(plain, plain_opt, x, y, 3)
        a, b = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides
            a.append(step_time(ours, ours_opt, x, y, args.steps))
            b.append(step_time(plain, plain_opt, x, y, args.steps))
        ta, tb = statistics.median(a), statistics.median(b)
        print(f"{kind:22s} {ta * 1e3:12.2f} {tb * 1e3:9.2f} {ta / tb:6.2f}x")


if __name__ == "__main__":
    main()
