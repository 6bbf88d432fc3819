"""Every test runs offline: no hub, and no socket may leave this machine.

This file sits at the repository root so that it also guards
`pytest --nbval-lax --nbval-current-env solutions/`. The same guard is installed in the
notebook kernels that nbval starts, through an IPython startup file in a private IPYTHONDIR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

GUARD = '''
import socket as _socket

_connect = _socket.socket.connect

def _loopback_only(self, address, *args):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network access blocked in tests: tried to connect to {address!r}")
    return _connect(self, address, *args)

_socket.socket.connect = _loopback_only
'''

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
_ipython_dir = Path(tempfile.mkdtemp(prefix="mi-course-ipython-"))
(_ipython_dir / "profile_default" / "startup").mkdir(parents=True)
(_ipython_dir / "profile_default" / "startup" / "00-offline.py").write_text(GUARD)
os.environ["IPYTHONDIR"] = str(_ipython_dir)
exec(GUARD)
