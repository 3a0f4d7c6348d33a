# Copyright (c) mmvheat contributors. All rights reserved.
import pytest


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels in the interpreter, with the default backend."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.delenv('MMVHEAT_HCO_BACKEND', raising=False)
