"""Every public name of carv_core exists in carv_torch with the same signature.

The only differences allowed (design.md §4): ``rng`` becomes ``generator``
(same position, kind and default), and trailing keyword-only ``device``/``dtype``
parameters may be added. Backend-agnostic objects (the designs of
:mod:`carv_core.designs`, whose integer layouts carv_torch applies on the device)
are exported as the *same* objects. For classes, ``__init__`` and every public method or
property of the core class are compared the same way.
"""

import inspect

import pytest

pytest.importorskip("torch")

import carv_core  # noqa: E402
import carv_torch  # noqa: E402

RENAMED = {"rng": "generator"}
EXTRA_KEYWORD_ONLY = {"device", "dtype"}


def _expected(core_sig: inspect.Signature) -> list[tuple]:
    return [(RENAMED.get(p.name, p.name), p.kind, p.default) for p in core_sig.parameters.values()]


def assert_same_signature(core_obj, torch_obj, label: str) -> None:
    core_sig, torch_sig = inspect.signature(core_obj), inspect.signature(torch_obj)
    expected = _expected(core_sig)
    params = list(torch_sig.parameters.values())
    got = [(p.name, p.kind, p.default) for p in params[:len(expected)]]
    assert got == expected, f"{label}: carv_torch{torch_sig} does not match carv_core{core_sig}"
    extras = params[len(expected):]
    for p in extras:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in EXTRA_KEYWORD_ONLY, (
            f"{label}: extra parameter {p.name!r} ({p.kind.description}) is not a keyword-only "
            f"device/dtype; carv_torch{torch_sig} vs carv_core{core_sig}"
        )


def _public_members(cls) -> list[str]:
    return sorted(name for name in vars(cls)
                  if not name.startswith("_") or name == "__call__")


SHARED = sorted(carv_core.__all__)


def test_every_core_name_is_exported():
    missing = [name for name in SHARED if name not in carv_torch.__all__]
    assert missing == []
    assert all(hasattr(carv_torch, name) for name in carv_torch.__all__)


@pytest.mark.parametrize("name", SHARED)
def test_same_signature(name):
    core_obj, torch_obj = getattr(carv_core, name), getattr(carv_torch, name)
    if torch_obj is core_obj:  # shared as it is (allocation maths, constants, designs)
        return
    if not callable(core_obj):  # constants: BETA_SCHEDULES, DESIGNS, WEIGHTINGS
        assert torch_obj == core_obj
        return
    assert callable(torch_obj)
    assert inspect.isclass(torch_obj) == inspect.isclass(core_obj), name
    assert_same_signature(core_obj, torch_obj, name)
    if not inspect.isclass(core_obj):
        return
    if hasattr(core_obj, "_fields"):  # NamedTuple results
        assert torch_obj._fields == core_obj._fields
    for member in _public_members(core_obj):
        assert hasattr(torch_obj, member), f"carv_torch.{name} lacks {member!r}"
        core_attr = inspect.getattr_static(core_obj, member)
        torch_attr = inspect.getattr_static(torch_obj, member)
        if isinstance(core_attr, property):
            assert isinstance(torch_attr, property), f"{name}.{member} should be a property"
        elif callable(getattr(core_obj, member)):
            assert_same_signature(getattr(core_obj, member), getattr(torch_obj, member),
                                  f"{name}.{member}")


def test_signature_check_rejects_a_mismatch():
    """The checker itself fails on a renamed, reordered or extra positional parameter."""
    def core(u, p, q, rng=None): ...
    def ok(u, p, q, generator=None, *, device=None): ...
    def renamed(u, p, proposal, generator=None): ...
    def extra(u, p, q, generator=None, device=None): ...
    def default(u, p, q, generator=0): ...
    assert_same_signature(core, ok, "ok")
    for bad in (renamed, extra, default):
        with pytest.raises(AssertionError):
            assert_same_signature(core, bad, bad.__name__)


def test_allocation_is_the_core_implementation():
    """Scalar host-side maths is not written twice."""
    for name in carv_core.allocation.__all__:
        assert getattr(carv_torch, name) is getattr(carv_core, name)
