"""Agents; imported as top-level ``agents`` (``<root>/src`` on ``sys.path``) it becomes ``src.agents``."""

if __name__ == "agents":  # the host's spelling: one module object for both names (src/_import_alias.py)
    import _import_alias

    _import_alias.adopt(__name__, __file__)
