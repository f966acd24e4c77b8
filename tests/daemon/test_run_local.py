"""`make run` keeps every path under its folder: the system's defaults belong to a pyiscsid
that may be running for real (its NBD socket would be unlinked and taken over)."""

from __future__ import annotations

from pathlib import Path

from pyiscsid.daemon.main import parse_args
from pyiscsid.daemon.run_local import daemon_argv


def test_every_path_the_daemon_takes_is_under_the_folder(tmp_path: Path) -> None:
    """Each option whose default is an absolute path (--config, --state-dir, --socket,
    --nbd-socket...) is given, under the folder; an option added later is checked too."""
    root = tmp_path / ".run"
    argv = daemon_argv(Path("/venv/bin"), root)
    assert argv[0] == "/venv/bin/pyiscsid"
    given = parse_args(argv[1:])
    defaults = parse_args([])
    paths = {
        name: value
        for name, value in vars(defaults).items()
        if isinstance(value, str) and value.startswith("/")
    }
    assert {"config", "state_dir", "socket", "nbd_socket"} <= set(paths)
    for name in paths:
        assert Path(getattr(given, name)).parent == root, name
