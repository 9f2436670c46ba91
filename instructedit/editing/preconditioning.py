"""Inverse key covariances that whiten an editor's keys (``EditorConfig.precondition``).

ROME's update ``(v - Wk) (C^-1 k)^T / (k^T C^-1 k)`` changes the output mostly for inputs like
the edited key ``k`` and little for the inputs the layer usually sees, because ``C`` is their
second moment. The same whitening applied to a MEND update's keys aims at a one-pass editor with
ROME's specificity. The covariances are those of :func:`~.covariance.key_covariance` (the inputs
of a block's MLP down-projection, estimated once per model from benchmark text and cached on
disk), so only down-projections can be preconditioned.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..model.backbone import Backbone
from .covariance import key_covariance

log = logging.getLogger(__name__)


def key_inverses(backbone: Backbone, module_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The inverse regularised key covariance of every module in ``module_names``.

    Raises ValueError for a module that is not an MLP down-projection.
    """
    out = {}
    for name in module_names:
        layer = backbone.adapter.layer_index(name)
        if backbone.adapter.mlp_out_name(layer, backbone.model) != name:
            raise ValueError(f"only MLP down-projections can be preconditioned, not {name}")
        cov = key_covariance(backbone, layer)
        if cov is None:
            raise ValueError("the key covariance is the identity: nothing to precondition")
        out[name] = torch.linalg.inv(cov.double()).float().to(backbone.device)
    log.info("key preconditioners for %d modules", len(out))
    return out


def attach_preconditioners(network, backbone: Backbone) -> None:
    """Fill ``network.preconditioners`` when its config asks for them."""
    if network.config.precondition == "covariance":
        network.preconditioners = key_inverses(backbone, network.module_names)
