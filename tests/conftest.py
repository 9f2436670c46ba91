"""Shared fixtures: tiny random GPT-2 and LLaMA models saved to folders and loaded by path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: tiny models gain nothing from more, and on a busy shared machine OpenMP spin-waiting
# makes every small matmul ~1000x slower (16 ms instead of 0.02 ms measured with 2 threads).
torch.set_num_threads(1)

from instructedit.model.backbone import load_backbone  # noqa: E402  (after the offline settings)
from tests.tiny_models import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


# Tiny backbones loaded from the folders above (module-scoped: each test file loads its own).
@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_backbone(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture(params=["llama", "gpt2"])
def backbone(request):
    """Each tiny family in turn."""
    return request.getfixturevalue(request.param)
