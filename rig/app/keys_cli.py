"""``rig keys``: the CURVE keys that let only the rig's own processes and listed consoles onto its sockets.

A rig whose sockets are reachable from a network (``[bus] host`` other than loopback) refuses to start
without them, because anyone who reaches the command socket can open the valve and stop the session. The
folder's layout is described in :mod:`rig.core.auth`; docs/SECURITY.md says what the keys protect.

    rig keys init KEYS_DIR                 the rig's key pair and an empty allowed/ list
    rig keys add-console KEYS_DIR NAME     a key pair for console NAME, allowed in (copy its folder there)
    rig keys list KEYS_DIR                 the consoles allowed in
    rig keys revoke KEYS_DIR NAME          take NAME's key off the list (from the next session on)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from rig.core.auth import RIG_KEY, KeysProblem, check_key_name, load_rig_keys, write_key_pair, write_public_key


def init_keys(keys_dir: Path) -> str:
    """Make the rig's pair in ``keys_dir``; returns what to do next. Never overwrites a pair."""
    if (keys_dir / f"{RIG_KEY}.key_secret").exists():
        raise KeysProblem(f"{keys_dir} already holds the rig's keys (delete the folder to start over)")
    keys_dir.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        keys_dir.chmod(0o700)  # the rig's secret key lives here
    (keys_dir / "allowed").mkdir(exist_ok=True)
    write_key_pair(keys_dir, RIG_KEY)
    return (f"made the rig's key pair in {keys_dir}.\nnext: rig keys add-console {keys_dir} NAME (one per console), "
            f"then set [bus] keys_dir = \"{keys_dir}\" in the rig's config")


def add_console(keys_dir: Path, name: str) -> str:
    """Make console ``name``'s pair, allow it, and put what the console needs in ``consoles/NAME``."""
    check_key_name(name)
    rig = load_rig_keys(keys_dir)  # also checks the folder holds the rig's keys
    allowed = keys_dir / "allowed" / f"{name}.key"
    folder = keys_dir / "consoles" / name
    if allowed.exists() or folder.exists():
        raise KeysProblem(f"a console named {name!r} exists already ({allowed} or {folder}); revoke it first")
    public_file, _ = write_key_pair(folder, name)
    write_public_key(folder / f"{RIG_KEY}.key", rig.public)
    allowed.parent.mkdir(exist_ok=True)
    shutil.copyfile(public_file, allowed)
    return (f"console {name!r} allowed ({allowed}).\nmove {folder} to the console's PC (it holds {name}'s secret "
            f"key: keep no other copy), then run there: rig console --connect tcp://RIG-PC:PORT --keys FOLDER\n"
            "a running session reads the list at its start: the console gets in from the next session on")


def list_consoles(keys_dir: Path) -> list[str]:
    """The names of the consoles allowed in, each with the start of its public key."""
    rig = load_rig_keys(keys_dir)
    return [f"{name}  {key[:8].decode()}…" for key, name in sorted(rig.allowed.items(), key=lambda kv: kv[1])
            if name != RIG_KEY]


def revoke(keys_dir: Path, name: str) -> str:
    check_key_name(name)
    allowed = keys_dir / "allowed" / f"{name}.key"
    if not allowed.exists():
        raise KeysProblem(f"no console named {name!r} is allowed in {keys_dir}")
    allowed.unlink()
    folder = keys_dir / "consoles" / name
    if folder.exists():
        shutil.rmtree(folder)  # its secret key, if it was never moved to the console
    return f"console {name!r} revoked: no session started from now on lets it in"


def _cmd_keys(args: argparse.Namespace) -> int:
    keys_dir = Path(args.keys_dir)
    try:
        if args.action == "init":
            print(init_keys(keys_dir))
        elif args.action == "add-console":
            print(add_console(keys_dir, args.name))
        elif args.action == "revoke":
            print(revoke(keys_dir, args.name))
        else:
            for line in list_consoles(keys_dir) or ["(no console allowed yet: rig keys add-console KEYS_DIR NAME)"]:
                print(line)
    except (KeysProblem, OSError) as exc:
        print(f"rig keys: {exc}", file=sys.stderr)
        return 2
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser(
        "keys", help="make the keys that let only listed consoles onto the rig's sockets (needed off loopback)",
        description="CURVE keys for the command socket and the streams (docs/SECURITY.md). With [bus] keys_dir "
                    "set, the rig accepts only its own processes and the consoles listed in KEYS_DIR/allowed, "
                    "and records each command under the name of the key that sent it. A rig whose bus.host is "
                    "not loopback refuses to start without keys.")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="make the rig's key pair in KEYS_DIR")
    init.add_argument("keys_dir", metavar="KEYS_DIR")
    add = actions.add_parser("add-console", help="make a console's key pair and allow it in")
    add.add_argument("keys_dir", metavar="KEYS_DIR")
    add.add_argument("name", metavar="NAME", help="the console's name: its commands are recorded under it")
    listing = actions.add_parser("list", help="the consoles allowed in")
    listing.add_argument("keys_dir", metavar="KEYS_DIR")
    gone = actions.add_parser("revoke", help="take a console off the list (from the next session on)")
    gone.add_argument("keys_dir", metavar="KEYS_DIR")
    gone.add_argument("name", metavar="NAME")
    keys.set_defaults(func=_cmd_keys)
