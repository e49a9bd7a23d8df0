"""What the Alrao heads of a DQN population see while the body learns: the curvature probe.

A head's own update is gradient descent on a quadratic in its weights, with Hessian (Gauss-Newton)
``F = E_b [z_b, 1][z_b, 1]^T / sigma^2``. Along the top curvature direction one step moves the head's
outputs by the fraction ``s_j`` of their error: ``s_j = eta_j lambda_max(E_b [z, 1][z, 1]^T) / sigma^2``
for a plain step (Algorithm 1; ``sigma^2`` the loss's variance: 1 with ``td_variance`` 'unit' or 'switch'),
``s_j = eta_j lambda_max / E_b ||[z, 1]||^2 <= eta_j`` for a
normalized one (``head_step="normalized"``); a head with ``s_j > 2`` diverges. Every ``every``
updates :class:`HeadProbe` records, per Alrao member, the body's feature norm ``mean_b ||z_b||``,
``lambda_max``, the trace, the heads' variance, each head's ``s_j``, the dead heads and the switch's
averaging weights (its winner: the head with the largest weight)::

    probe = HeadProbe(every=250)
    population.train(logdirs, on_update=probe)
    probe.write_csv("probe.csv")
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alrao_rl.rates import log_spaced

if TYPE_CHECKING:
    from .population import PopulationDQN

__all__ = ["HeadProbe"]


class HeadProbe:
    """Records the heads' curvature and the switch of every Alrao member of a population.

    :param every: record after one gradient step in ``every``.
    :param label: a name written in every row (e.g. the variant), to merge probes in one table.
    """

    def __init__(self, every: int = 250, label: str = "") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.label = label
        self.rows: list[dict[str, Any]] = []
        self._updates = 0

    @torch.no_grad()
    def __call__(self, step: int, population: PopulationDQN, batch: tuple[Tensor, ...]) -> None:
        self._updates += 1
        if self._updates % self.every:
            return
        from .population import _AlraoGroup

        for group in population.groups:
            if not isinstance(group, _AlraoGroup):
                continue
            model, config = group.online, group.configs[0]
            z = model.body(batch[0][group.slots])  # [P, B, d]
            ones = z.new_ones(*z.shape[:-1], 1)
            zt = torch.cat((z, ones), dim=-1) if model.heads.bias is not None else z
            gram = zt.transpose(1, 2) @ zt / zt.shape[1]
            lam = torch.linalg.eigvalsh(gram.double())[:, -1]
            trace = gram.diagonal(dim1=1, dim2=2).sum(dim=1).double()
            eta = log_spaced(model.n_heads, config.eta_min, config.eta_max).double()
            variances = group.td_variances()
            weights = model.averaging_log_weights().exp()
            for j, k in enumerate(group.members):
                var = variances[j] if variances[j] is not None else 1.0
                # a head's own step: at the loss's variance (1 with td_variance 'switch'), or normalized
                loss_var = 1.0 if config.td_variance == "switch" else var
                scale = 1.0 / float(trace[j]) if model.head_step == "normalized" else 1.0 / loss_var
                s = (eta * float(lam[j]) * scale * population.configs[k].effective_lr).tolist()
                post = weights[j].tolist()
                winner = max(range(len(post)), key=post.__getitem__)
                self.rows.append({
                    "label": self.label, "env": config.env, "head_step": model.head_step, "member": k,
                    "seed": population.configs[k].seed, "step": step,
                    "z_norm": float(z[j].norm(dim=1).mean()), "lambda": float(lam[j]), "trace": float(trace[j]),
                    "variance": var, "winner": winner, "winner_s": s[winner],
                    "dead": int(model.heads.dead[j].sum()),
                    **{f"s_{h}": v for h, v in enumerate(s)}, **{f"a_{h}": v for h, v in enumerate(post)},
                    **{f"dead_{h}": int(d) for h, d in enumerate(model.heads.dead[j].tolist())},
                })

    def write_csv(self, path: str) -> None:
        """The rows recorded, one per member and record."""
        if not self.rows:
            raise ValueError("nothing recorded (no Alrao member, or fewer than `every` updates)")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
