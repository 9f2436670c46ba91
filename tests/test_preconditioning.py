"""Whitened editor keys (EditorConfig.precondition) and the training-recipe options around them."""
from __future__ import annotations

import json

import pytest
import torch

from instructedit.editing.mend import EditorConfig, MendNetwork, whiten
from instructedit.train.config import TrainConfig


def test_whitening_keeps_the_keys_own_response_and_damps_common_directions():
    torch.manual_seed(0)
    dim = 16
    common = torch.randn(dim)
    keys = torch.randn(500, dim) * 0.3 + common          # every input shares one direction
    cov = keys.t() @ keys / len(keys) + 1e-3 * torch.eye(dim)
    u = keys[:4]
    white = whiten(u, torch.linalg.inv(cov))
    torch.testing.assert_close((u * white).sum(-1), (u * u).sum(-1))   # x = u_i: same response
    others = keys[100:]
    # typical other inputs trigger the whitened key far less than the raw one
    assert (others @ white.t()).abs().mean() < 0.3 * (others @ u.t()).abs().mean()


def test_network_applies_its_preconditioner_to_keys_only():
    torch.manual_seed(0)
    net = MendNetwork({"m": (6, 4)}, EditorConfig(rank=4, n_blocks=1, precondition="covariance")).eval()
    u, d = torch.randn(3, 6), torch.randn(3, 4)
    plain_u, plain_d = net.transform("m", u, d)
    net.preconditioners = {"m": torch.diag(torch.arange(1.0, 7.0))}
    white_u, white_d = net.transform("m", u, d)
    torch.testing.assert_close(white_d, plain_d)
    torch.testing.assert_close(white_u, whiten(plain_u, net.preconditioners["m"]))


def test_editor_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="precondition"):
        EditorConfig(precondition="magic")
    with pytest.raises(ValueError, match="key_on"):
        EditorConfig(key_on="verbs")


def test_train_config_with_recipe_options_round_trips(tmp_path):
    config = TrainConfig(layers=(6, 7, 8), matrices=("down_proj",), key_on="subject",
                         precondition="covariance", plain_loss=True, neighbour_locality=True,
                         kl_all_positions=True)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_file(path) == config
