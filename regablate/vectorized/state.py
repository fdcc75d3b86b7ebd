"""A stacked model's trainable state, member by member: what the trainer copies at a best epoch
and writes into each member's checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StackState:
    """θ, BatchNorm running statistics and step counts, per member (leading axis K)."""

    theta: torch.Tensor
    running: dict[int, tuple[torch.Tensor, torch.Tensor]]
    batches: torch.Tensor

    def clone(self) -> StackState:
        return StackState(self.theta.detach().clone(),
                          {i: (m.clone(), v.clone()) for i, (m, v) in self.running.items()},
                          self.batches.clone())

    @torch.no_grad()
    def copy_rows(self, rows: list[int], src: StackState) -> None:
        """Members `rows` take their state from `src`."""
        idx = torch.tensor(rows, device=self.theta.device)
        self.theta[idx] = src.theta.detach()[idx]
        for i, (m, v) in self.running.items():
            m[idx], v[idx] = src.running[i][0][idx], src.running[i][1][idx]
        self.batches[idx.cpu()] = src.batches[idx.cpu()]
