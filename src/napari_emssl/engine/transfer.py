"""Load pretrained weights into a downstream network by parameter name."""

from __future__ import annotations

import torch


def load_matching(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every tensor whose name and shape match; return (matched, total in ``net``).

    Task heads whose shape differs (another number of classes) are left as initialised.
    """
    own = net.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    own.update(matched)
    net.load_state_dict(own)
    return len(matched), len(own)
