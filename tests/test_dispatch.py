"""The switch between fused kernels and the reference path."""

from __future__ import annotations

import pytest

import sparsecore
from sparsecore._lib._dispatch import KERNELS_ENV, kernels_enabled


def test_default_enables_kernels(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert kernels_enabled() is True


@pytest.mark.parametrize("value", ["reference", "REFERENCE", " off ", "0"])
def test_environment_forces_reference(monkeypatch, value):
    monkeypatch.setenv(KERNELS_ENV, value)
    assert kernels_enabled() is False


@pytest.mark.parametrize("value", ["auto", "", "1"])
def test_environment_allows_kernels(monkeypatch, value):
    monkeypatch.setenv(KERNELS_ENV, value)
    assert kernels_enabled() is True


def test_environment_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="SPARSECORE_KERNELS"):
        kernels_enabled()


def test_context_manager_nests_and_overrides_environment(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "reference")
    assert kernels_enabled() is False
    with sparsecore.use_kernels(True):
        assert kernels_enabled() is True
        with sparsecore.use_kernels(False):
            assert kernels_enabled() is False
        assert kernels_enabled() is True
    assert kernels_enabled() is False
    monkeypatch.delenv(KERNELS_ENV)
    with sparsecore.use_kernels(False):
        assert kernels_enabled() is False
    assert kernels_enabled() is True


def test_context_manager_restores_after_error(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    with pytest.raises(RuntimeError), sparsecore.use_kernels(False):
        raise RuntimeError("inside")
    assert kernels_enabled() is True


def test_context_manager_rejects_non_bool():
    with pytest.raises(TypeError, match="enabled"):
        with sparsecore.use_kernels("no"):  # type: ignore[arg-type]
            pass
