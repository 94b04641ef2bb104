"""What the real node changes on the host, recorded before it starts and undone when it stops.

The kubelet and the CNI plugins touch the host outside any directory we can choose: sysctls
(``vm.overcommit_memory``, ``kernel.panic``, ``kernel.panic_on_oops``, maybe ``net.ipv4.ip_forward``),
``/var/log/containers``, ``/var/lib/kubelet/device-plugins``, ``/var/lib/cni``, ``/run/containerd``,
``/run/netns``, a bridge, iptables chains, and cgroups under ``kubepods`` in every v1 controller.
``HostLedger.record()`` writes what was there before (``host.json`` in the state directory);
``restore()`` puts it back: sysctls to their old values, created paths and cgroups removed, the bridge
deleted, iptables rules and chains that appeared removed. It never touches what existed before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tools.cluster import log

# The kubelet's setupKernelTunables, and what the CNI bridge turns on.
SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.bridge.bridge-nf-call-iptables")
HOST_PATHS = ("/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/var/lib/cni", "/run/containerd",
              "/run/netns", "/var/run/netns", "/etc/cni", "/opt/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "kubepods.slice")
IPTABLES = ("iptables", "ip6tables")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def cgroup_dirs() -> list[Path]:
    """Every controller directory where the kubelet may create its pod cgroups."""
    if not CGROUP_ROOT.is_dir():
        return []
    roots = [CGROUP_ROOT] + [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    return [root / name for root in roots for name in CGROUP_NAMES]


def iptables_dump(binary: str) -> str | None:
    save = shutil.which(f"{binary}-save")
    if save is None:
        return None
    proc = subprocess.run([save], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def iptables_undo(before: str, after: str) -> list[list[str]]:
    """The commands that take ``after`` back to ``before``: new rules deleted, then new chains removed.

    Pure, so it is unit-tested on dumps; rules are compared as whole ``-A`` lines per table.
    """
    def parse(dump: str) -> dict[str, tuple[set[str], list[str]]]:
        tables: dict[str, tuple[set[str], list[str]]] = {}
        table = ""
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                tables[table] = (set(), [])
            elif table and line.startswith(":"):
                tables[table][0].add(line[1:].split()[0])
            elif table and line.startswith("-A "):
                tables[table][1].append(line)
        return tables

    old, new = parse(before), parse(after)
    commands: list[list[str]] = []
    for table, (chains, rules) in new.items():
        old_chains, old_rules = old.get(table, (set(), []))
        for rule in reversed(rules):
            if rule not in old_rules:
                commands.append(["-t", table, "-D", *shlex.split(rule[3:])])
        for chain in sorted(chains - old_chains):
            commands.append(["-t", table, "-F", chain])
            commands.append(["-t", table, "-X", chain])
    return commands


@dataclass
class HostRecord:
    sysctls: dict[str, str | None] = field(default_factory=dict)
    existing_paths: list[str] = field(default_factory=list)
    existing_cgroups: list[str] = field(default_factory=list)
    iptables: dict[str, str | None] = field(default_factory=dict)
    bridge_existed: bool = False


class HostLedger:
    def __init__(self, state_dir: Path, bridge: str) -> None:
        self.path = state_dir / "host.json"
        self.bridge = bridge

    def load(self) -> HostRecord | None:
        if not self.path.is_file():
            return None
        return HostRecord(**json.loads(self.path.read_text()))

    def record(self) -> HostRecord:
        """Record the host as it is now, unless a record from an unfinished run is already there."""
        existing = self.load()
        if existing is not None:
            return existing
        record = HostRecord(
            sysctls={name: read_sysctl(name) for name in SYSCTLS},
            existing_paths=[p for p in HOST_PATHS if Path(p).exists() or Path(p).is_symlink()],
            existing_cgroups=[str(p) for p in cgroup_dirs() if p.exists()],
            iptables={binary: iptables_dump(binary) for binary in IPTABLES},
            bridge_existed=Path(f"/sys/class/net/{self.bridge}").exists(),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(asdict(record), indent=1))
        return record

    def restore(self) -> list[str]:
        """Undo what the node changed; returns what was done (also logged). Safe to call twice."""
        record = self.load()
        if record is None:
            return []
        done: list[str] = []
        for name, value in record.sysctls.items():
            now = read_sysctl(name)
            if value is not None and now is not None and now != value:
                try:
                    _sysctl_path(name).write_text(value)
                    done.append(f"sysctl {name} {now} -> {value}")
                except OSError as exc:
                    done.append(f"sysctl {name}: could not restore {value}: {exc}")
        if not record.bridge_existed and Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
            done.append(f"bridge {self.bridge} deleted")
        left: list[str] = []
        for cgroup in cgroup_dirs():
            if cgroup.exists() and str(cgroup) not in record.existing_cgroups:
                _kill_cgroup_tree(cgroup)  # container processes of this node, outliving their shims
                removed = _remove_cgroup_tree(cgroup)
                done.extend(removed)
                left.extend(line for line in removed if "not removable" in line)
        for binary, before in record.iptables.items():
            after = iptables_dump(binary)
            if before is None or after is None:
                continue
            for command in iptables_undo(before, after):
                subprocess.run([binary, *command], check=False, capture_output=True)
                done.append(f"{binary} {' '.join(command)}")
        for raw in HOST_PATHS:
            path = Path(raw)
            if raw in record.existing_paths or not (path.exists() or path.is_symlink()):
                continue
            _unmount_below(path)
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
        for line in done:
            log(f"host: {line}")
        if left:
            log("host: the record stays in place; run down again once what is left has exited")
        else:
            self.path.unlink()
        return done


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(path):
            mounts.append(point)
    return sorted(mounts, key=len, reverse=True)


def _unmount_below(path: Path) -> None:
    for point in _mounts_below(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _kill_cgroup_tree(root: Path) -> None:
    """SIGKILL every process left in a cgroup tree this node created (only its containers live there)."""
    for procs in root.rglob("cgroup.procs"):
        try:
            pids = [int(line) for line in procs.read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)


def _remove_cgroup_tree(root: Path) -> list[str]:
    """rmdir leaf-first; a cgroup still holding processes (none of ours should) is reported, not killed."""
    left: list[str] = []
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            left.append(str(directory))
    try:
        root.rmdir()
    except OSError as exc:
        left.append(f"{root} ({exc.strerror})")
    return [f"cgroup {root} removed"] if not left else [f"cgroup not removable: {', '.join(left[:3])}"]


def mounts_below(path: Path) -> list[str]:
    return _mounts_below(path)

