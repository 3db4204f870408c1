"""Agents; imported as top-level ``agents`` (``<root>/src`` on ``sys.path``) it becomes ``src.agents``."""

if __name__ == "agents":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import importlib.util as _util
    import sys as _sys
    from pathlib import Path as _Path

    if _util.find_spec("src") is None:
        _sys.path.append(str(_Path(__file__).resolve().parents[2]))
    try:
        from src._import_alias import adopt as _adopt
    except ImportError as _exc:
        raise ImportError(f"{__name__!r} ({__file__}) needs its own 'src' package importable: {_exc}") from _exc
    _adopt(__name__, __file__)
