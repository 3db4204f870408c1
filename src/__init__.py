"""The project's import root: everything lives under ``src.`` (see ``src/_import_alias.py``).

Importing it installs the alias finder, so the host's short spelling (``agents.…``, ``mlops.…``,
``repositories.…`` with ``<root>/src`` on ``sys.path``) reaches these same module objects.
"""

from ._import_alias import install as _install_import_alias

_install_import_alias()
