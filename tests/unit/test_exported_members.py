"""The package's face: ``servingbench.__all__`` is exactly its public names, sorted (httpx's test_exported_members).

A name imported into ``servingbench/__init__.py`` but left out of ``__all__`` (or one in ``__all__`` that is not
there) fails here, so the face a user's perf test imports from cannot drift from the list that documents it.
"""

from __future__ import annotations

import types

import servingbench


def test_all_imports_are_exported() -> None:
    public = (name for name, value in vars(servingbench).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType))  # subpackages are not the face
    assert servingbench.__all__ == sorted(public, key=str.casefold)


def test_every_exported_member_is_the_suites_own() -> None:
    for name in servingbench.__all__:
        member = getattr(servingbench, name)
        assert member.__module__.startswith("servingbench."), (name, member.__module__)
        assert member.__name__ == name, f"{name} is exported under another name than its own ({member.__name__})"
