"""The rendered start script, run for real by POSIX shells against real and snapshot topologies.

Expected core counts come from hwloc's own reading of each snapshot (NAME.console), or from this
machine's /sys read in Python, never from the script's logic.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from pinserve.render.script import render_start_script
from snapshots import SNAPSHOT_DIR

pytestmark = pytest.mark.unit

HWLOC_DIR = SNAPSHOT_DIR  # tests/data/hwloc-sysfs unless PINSERVE_SNAPSHOTS says otherwise
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "TENSORFLOW_INTRA_OP_PARALLELISM",
    "TENSORFLOW_INTER_OP_PARALLELISM",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "KMP_SETTINGS",
)
LOG_KEYS = (
    "cpus",
    "allowed_cpus",
    "counted_cpus",
    "physical_cores",
    "threads_per_core",
    "smt",
    "source",
    "planned_cores",
    "planned_match",
    "OMP_NUM_THREADS",
    "TENSORFLOW_INTRA_OP_PARALLELISM",
    "TENSORFLOW_INTER_OP_PARALLELISM",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "KMP_SETTINGS",
    "user_set",
    "thread_config",
)
SMT_AFFINITY = "granularity=fine,compact,1,0"
FLAT_AFFINITY = "granularity=fine,compact"
BASE_ARGV = ["--port=8500", "--rest_api_port=8501", "--model_name=m", "--model_base_path=/models/m"]


def _shells() -> list[tuple[str, ...]]:
    """/bin/sh always; dash and busybox too where present and not already /bin/sh."""
    shells: list[tuple[str, ...]] = [("/bin/sh",)]
    dash = shutil.which("dash")
    if dash and os.path.realpath(dash) != os.path.realpath("/bin/sh"):
        shells.append((dash,))
    busybox = shutil.which("busybox")
    if busybox:
        shells.append((busybox, "sh"))
    return shells


SHELLS = _shells()
SHELL_IDS = ["+".join(Path(p).name for p in s) for s in SHELLS]


@pytest.fixture(params=SHELLS, ids=SHELL_IDS)
def shell(request: pytest.FixtureRequest) -> tuple[str, ...]:
    value: tuple[str, ...] = request.param
    return value


# --- running the script ---------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stderr: str
    stdout: str
    shell_pid: int

    @property
    def server(self) -> dict[str, Any]:
        # The whole of stdout must be the server's JSON: the script itself prints nothing there.
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    @property
    def argv(self) -> list[str]:
        argv: list[str] = self.server["argv"]
        return argv

    @property
    def env(self) -> dict[str, str | None]:
        env: dict[str, str | None] = self.server["env"]
        return env

    @property
    def log(self) -> dict[str, str]:
        return parse_log(self.stderr)


def parse_log(stderr: str) -> dict[str, str]:
    lines = [line for line in stderr.splitlines() if line.startswith("pinserve: ")]
    assert len(lines) == 1, f"want exactly one log line, got: {stderr!r}"
    fields: dict[str, str] = {}
    for token in lines[0].removeprefix("pinserve: ").split(" "):
        key, sep, value = token.partition("=")
        assert sep and value, f"not key=value: {token!r} in {lines[0]!r}"
        assert key not in fields, f"duplicate key {key}"
        fields[key] = value
    assert tuple(fields) == LOG_KEYS, lines[0]
    return fields


@pytest.fixture(scope="session")
def script_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("script") / "start.sh"
    path.write_text(render_start_script())
    return path


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("server") / "fake_model_server"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"names = {list(THREAD_VARS)!r}\n"
        "json.dump({'pid': os.getpid(), 'argv': sys.argv[1:],"
        " 'env': {n: os.environ.get(n) for n in names}}, sys.stdout)\n"
    )
    path.chmod(0o755)
    return path


class Runner(Protocol):
    def __call__(
        self,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        taskset: str | None = None,
        script: Path | None = None,
    ) -> Run: ...


@pytest.fixture
def run(shell: tuple[str, ...], script_path: Path, fake_server: Path) -> Runner:
    def _run(
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        taskset: str | None = None,
        script: Path | None = None,
    ) -> Run:
        # A clean environment, so the runner's own OMP_*/KMP_* never leak in as "user-set".
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PINSERVE_SERVER_BINARY": str(fake_server),
            "PINSERVE_MODEL_NAME": "m",
            "PINSERVE_MODEL_BASE_PATH": "/models/m",
        }
        full_env.update(env or {})
        prefix = ["taskset", "-c", taskset] if taskset is not None else []
        proc = subprocess.Popen(
            [*prefix, *shell, str(script or script_path), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stdout, stderr = proc.communicate(timeout=60)
        return Run(proc.returncode, stderr, stdout, proc.pid)

    return _run


def status_file(tmp_path: Path, cpus: str, trailer: str = "") -> Path:
    path = tmp_path / "status"
    path.write_text(
        f"Name:\tsh\nState:\tR (running)\nCpus_allowed:\tffffffff\nCpus_allowed_list:\t{cpus}{trailer}\n"
        "Mems_allowed_list:\t0\n"
    )
    return path


def cpu_list(cpus: list[int]) -> str:
    """Kernel list format ("0-3,8,10-11"), so the script's range expansion is exercised."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def expand(cpus: str) -> list[int]:
    out: list[int] = []
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


# --- hwloc snapshots --------------------------------------------------------------------------------


@dataclass
class Console:
    """hwloc's reading: PU OS index -> (package L#, core L#)."""

    pus: dict[int, tuple[int, int]]

    def expect(self, allowed: list[int]) -> dict[str, Any]:
        present = [cpu for cpu in allowed if cpu in self.pus]
        per_core = Counter(self.pus[cpu][1] for cpu in present)
        return {
            "counted": len(present),
            "cores": len(per_core),
            "smt": any(n > 1 for n in per_core.values()),
            "tpc": math.ceil(len(present) / len(per_core)),
        }

    def cores(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for pu, (_, core) in sorted(self.pus.items()):
            out.setdefault(core, []).append(pu)
        return dict(sorted(out.items()))

    def packages(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for pu, (package, _) in sorted(self.pus.items()):
            out.setdefault(package, []).append(pu)
        return dict(sorted(out.items()))


def parse_console(text: str) -> Console:
    pus: dict[int, tuple[int, int]] = {}
    package: int | None = None
    core: int | None = None
    for line in text.splitlines():
        if m := re.search(r"\bPackage L#(\d+)", line):
            package, core = int(m[1]), None
        elif m := re.search(r"\bCore L#(\d+)", line):
            core = int(m[1])
        elif m := re.search(r"\bPU L#\d+ \(P#(\d+)\)", line):
            assert package is not None and core is not None, line
            pus[int(m[1])] = (package, core)
    assert pus, "no PUs in console output"
    return Console(pus)


@dataclass
class Snapshot:
    name: str
    sys_root: Path
    console: Console

    @property
    def cpu_dir(self) -> Path:
        return self.sys_root / "devices" / "system" / "cpu"

    def all_cpus(self) -> list[int]:
        return sorted(int(p.name[3:]) for p in self.cpu_dir.glob("cpu[0-9]*"))


SNAPSHOT_NAMES = (
    "16em64t-4s2c2t",
    "16em64t-4s2c2t-offlines",
    "32intel64-2p8co2t+8ve",
    "64amd64-4s2n4ca2co",
    "8em64t-2s2ca2c",
    "96em64t-4no4pa3ca2co",
)


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Snapshot]:
    assert HWLOC_DIR.is_dir(), f"hwloc snapshots missing: {HWLOC_DIR}"
    out: dict[str, Snapshot] = {}
    for name in SNAPSHOT_NAMES:
        dest = tmp_path_factory.mktemp(name)
        with tarfile.open(HWLOC_DIR / f"{name}.tar.bz2") as tar:
            # The top directory is not always NAME (96em64t-4no4pa3ca2co unpacks as 96em64t-4n4d3ca2co).
            tops = {m.name.split("/")[0] for m in tar.getmembers()}
            tar.extractall(dest, filter="data")
        assert len(tops) == 1, tops
        sys_root = dest / tops.pop() / "sys"
        assert sys_root.is_dir()
        console = parse_console((HWLOC_DIR / f"{name}.console").read_text())
        out[name] = Snapshot(name, sys_root, console)
    return out


def _derived_cases(snap: Snapshot) -> dict[str, list[int]]:
    cores = list(snap.console.cores().values())
    whole = [c for c in cores if len(c) > 1] or cores
    packages = list(snap.console.packages().values())
    return {
        "all": snap.all_cpus(),
        "two-whole-cores": whole[0] + whole[1],
        "one-thread-per-core": [c[0] for c in cores],
        "last-package": packages[-1],
        "first-and-last-core": cores[0] + cores[-1],
    }


DERIVED = ("all", "two-whole-cores", "one-thread-per-core", "last-package", "first-and-last-core")


def assert_counts(run: Run, allowed: list[int], want: dict[str, Any]) -> None:
    assert run.returncode == 0, run.stderr
    log = run.log
    assert expand(log["cpus"]) == allowed
    assert log["source"] == "sysfs"
    assert int(log["allowed_cpus"]) == len(allowed)
    assert int(log["counted_cpus"]) == want["counted"]
    assert int(log["physical_cores"]) == want["cores"]
    assert int(log["threads_per_core"]) == want["tpc"]
    assert log["smt"] == ("true" if want["smt"] else "false")
    cores = str(want["cores"])
    inter = str(min(2, want["counted"]))
    affinity = SMT_AFFINITY if want["smt"] else FLAT_AFFINITY
    assert run.env == {
        "OMP_NUM_THREADS": cores,
        "TENSORFLOW_INTRA_OP_PARALLELISM": cores,
        "TENSORFLOW_INTER_OP_PARALLELISM": inter,
        "KMP_AFFINITY": affinity,
        "KMP_BLOCKTIME": "1",
        "KMP_SETTINGS": None,
    }
    assert (log["OMP_NUM_THREADS"], log["TENSORFLOW_INTRA_OP_PARALLELISM"]) == (cores, cores)
    assert (log["TENSORFLOW_INTER_OP_PARALLELISM"], log["KMP_AFFINITY"]) == (inter, affinity)
    assert log["user_set"] == "none"
    assert run.argv == [
        *BASE_ARGV,
        f"--tensorflow_intra_op_parallelism={cores}",
        f"--tensorflow_inter_op_parallelism={inter}",
    ]


def snapshot_env(snap: Snapshot | Path, status: Path) -> dict[str, str]:
    root = snap.sys_root if isinstance(snap, Snapshot) else snap
    return {"PINSERVE_SYSFS_ROOT": str(root), "PINSERVE_PROC_STATUS": str(status)}


@pytest.mark.parametrize("case", DERIVED)
@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_snapshot_counts_match_hwloc(
    run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path, name: str, case: str
) -> None:
    snap = snapshots[name]
    allowed = sorted(_derived_cases(snap)[case])
    result = run(env=snapshot_env(snap, status_file(tmp_path, cpu_list(allowed))))
    assert_counts(result, allowed, snap.console.expect(allowed))


# Hand-checked against the .console files, so a broken console parser cannot hide a broken script.
HAND_CASES = [
    # both hyperthreads of 2 cores of package 0
    ("16em64t-4s2c2t", "0,4,8,12", {"counted": 4, "cores": 2, "smt": True, "tpc": 2}),
    # one thread of each of the same 2 cores: cores = CPUs, no SMT
    ("16em64t-4s2c2t", "0,4", {"counted": 2, "cores": 2, "smt": False, "tpc": 1}),
    ("8em64t-2s2ca2c", "0-7", {"counted": 8, "cores": 8, "smt": False, "tpc": 1}),
    # 2 and 5 are offline (no topology/); 6 and 10 are different cores of package P#2
    ("16em64t-4s2c2t-offlines", "2,5-6,10", {"counted": 2, "cores": 2, "smt": False, "tpc": 1}),
    # all 16 listed, 12 online in 7 cores; 6 and 10 lost their siblings
    ("16em64t-4s2c2t-offlines", "0-15", {"counted": 12, "cores": 7, "smt": True, "tpc": 2}),
    # same package and core_id, different NUMA nodes: two cores (no die_id in this old kernel)
    ("64amd64-4s2n4ca2co", "0,8", {"counted": 2, "cores": 2, "smt": False, "tpc": 1}),
    ("64amd64-4s2n4ca2co", "0-63", {"counted": 64, "cores": 64, "smt": False, "tpc": 1}),
    # interleaved numbering: 1 and 17 are the two threads of one core, on package 0 with die_id
    ("32intel64-2p8co2t+8ve", "1,17", {"counted": 2, "cores": 1, "smt": True, "tpc": 2}),
    ("32intel64-2p8co2t+8ve", "0-31", {"counted": 32, "cores": 16, "smt": True, "tpc": 2}),
    ("96em64t-4no4pa3ca2co", "0-95", {"counted": 96, "cores": 96, "smt": False, "tpc": 1}),
    # odd count over whole and half cores: 3 CPUs on 2 cores rounds threads/core up
    ("16em64t-4s2c2t", "0,4,8", {"counted": 3, "cores": 2, "smt": True, "tpc": 2}),
]


@pytest.mark.parametrize("case", HAND_CASES, ids=[f"{n}:{c}" for n, c, _ in HAND_CASES])
def test_snapshot_hand_checked(
    run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path, case: tuple[str, str, dict[str, Any]]
) -> None:
    name, cpus, want = case
    snap = snapshots[name]
    allowed = expand(cpus)
    assert snap.console.expect(allowed) == want  # the console parser agrees with the hand count
    result = run(env=snapshot_env(snap, status_file(tmp_path, cpus)))
    assert_counts(result, allowed, want)


def test_hex_only_snapshot_has_no_list_files(snapshots: dict[str, Snapshot]) -> None:
    # Guards the premise of the cases above: these kernels expose only hex masks.
    for name in ("16em64t-4s2c2t", "96em64t-4no4pa3ca2co"):
        topo = snapshots[name].cpu_dir / "cpu0" / "topology"
        assert (topo / "thread_siblings").exists()
        assert not (topo / "thread_siblings_list").exists()
        assert not (topo / "die_id").exists()


def test_nul_terminated_files(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path) -> None:
    snap = snapshots["16em64t-4s2c2t-offlines"]
    copy = tmp_path / "sys"
    shutil.copytree(snap.sys_root / "devices" / "system" / "cpu", copy / "devices" / "system" / "cpu")
    padded = 0
    for path in (copy / "devices" / "system" / "cpu").glob("cpu*/**/*"):
        if path.is_file() and (path.parent.name == "topology" or path.name == "online"):
            path.write_bytes(path.read_bytes() + b"\0\0\0")
            padded += 1
    assert padded > 40
    allowed = expand("0-15")
    result = run(env=snapshot_env(copy, status_file(tmp_path, "0-15", trailer="\0")))
    assert_counts(result, allowed, snap.console.expect(allowed))
    assert result.log["cpus"] == "0-15"


# --- this machine's /sys, under taskset -------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text().strip("\0\n ") if path.exists() else ""


def python_count(cpus: list[int]) -> tuple[int, bool]:
    """Physical cores and SMT among cpus, from this machine's /sys."""
    per_core: Counter[tuple[str, ...]] = Counter()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        assert topo.is_dir(), f"cpu{cpu} has no topology"
        key = tuple(_read(topo / f) for f in ("physical_package_id", "die_id", "core_id", "thread_siblings"))
        per_core[key] += 1
    return len(per_core), any(n > 1 for n in per_core.values())


def _taskset_sets() -> list[list[int]]:
    allowed = sorted(os.sched_getaffinity(0))
    sets = [allowed[:1], allowed[:2], allowed]
    unique: list[list[int]] = []
    for s in sets:
        if s not in unique:
            unique.append(s)
    return unique


@pytest.fixture(scope="session")
def taskset() -> str:
    path = shutil.which("taskset")
    if path is None:
        pytest.skip("taskset (util-linux) is not installed")
    return path


@pytest.mark.parametrize("cpus", _taskset_sets(), ids=cpu_list)
def test_real_sys_under_taskset(run: Runner, taskset: str, cpus: list[int]) -> None:
    # Default PINSERVE_SYSFS_ROOT and PINSERVE_PROC_STATUS: the real /sys and /proc/self/status.
    result = run(taskset=cpu_list(cpus))
    cores, smt = python_count(cpus)
    assert_counts(
        result,
        cpus,
        {"counted": len(cpus), "cores": cores, "smt": smt, "tpc": math.ceil(len(cpus) / cores)},
    )


def test_exec_replaces_the_shell(run: Runner) -> None:
    result = run()
    assert result.returncode == 0, result.stderr
    # Same pid: the server is the container's main process and gets its signals directly.
    assert result.server["pid"] == result.shell_pid


def test_one_cpu_caps_inter_op(run: Runner, taskset: str) -> None:
    result = run(taskset=cpu_list(sorted(os.sched_getaffinity(0))[:1]))
    assert result.log["TENSORFLOW_INTER_OP_PARALLELISM"] == "1"
    assert result.env["TENSORFLOW_INTER_OP_PARALLELISM"] == "1"
    assert "--tensorflow_inter_op_parallelism=1" in result.argv


# --- fallbacks ---------------------------------------------------------------------------------------


def test_unreadable_topology_counts_allowed_cpus(run: Runner, tmp_path: Path) -> None:
    empty = tmp_path / "emptysys"
    empty.mkdir()
    result = run(env=snapshot_env(empty, status_file(tmp_path, "4-6,9")))
    assert result.returncode == 0, result.stderr
    log = result.log
    assert (log["source"], log["physical_cores"], log["counted_cpus"], log["smt"]) == (
        "allowed-cpus",
        "4",
        "4",
        "false",
    )
    assert result.env["OMP_NUM_THREADS"] == "4"
    assert result.env["KMP_AFFINITY"] == FLAT_AFFINITY


def test_unreadable_status_uses_nproc(run: Runner, taskset: str, tmp_path: Path) -> None:
    first = sorted(os.sched_getaffinity(0))[:1]
    result = run(env={"PINSERVE_PROC_STATUS": str(tmp_path / "missing")}, taskset=cpu_list(first))
    assert result.returncode == 0, result.stderr
    log = result.log
    assert (log["cpus"], log["source"], log["physical_cores"]) == ("unknown", "nproc", "1")
    assert log["TENSORFLOW_INTER_OP_PARALLELISM"] == "1"


# --- thread config, flags, user-set values ------------------------------------------------------------

SMT2 = "0,4,8,12"  # 16em64t-4s2c2t: 2 whole cores


@pytest.fixture
def smt2_env(snapshots: dict[str, Snapshot], tmp_path: Path) -> dict[str, str]:
    return snapshot_env(snapshots["16em64t-4s2c2t"], status_file(tmp_path, SMT2))


EXPECTED_ENV = {
    "OMP_NUM_THREADS": "2",
    "TENSORFLOW_INTRA_OP_PARALLELISM": "2",
    "TENSORFLOW_INTER_OP_PARALLELISM": "2",
    "KMP_AFFINITY": SMT_AFFINITY,
    "KMP_BLOCKTIME": "1",
    "KMP_SETTINGS": None,
}
NO_ENV = dict.fromkeys(THREAD_VARS)
THREAD_FLAGS = ["--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2"]


@pytest.mark.parametrize(
    ("mode", "want_env", "want_flags"),
    [
        ("env", EXPECTED_ENV, []),
        ("flags", NO_ENV, THREAD_FLAGS),
        ("both", EXPECTED_ENV, THREAD_FLAGS),
        ("", EXPECTED_ENV, THREAD_FLAGS),  # empty means the default, both
    ],
)
def test_thread_config_modes(
    run: Runner,
    smt2_env: dict[str, str],
    mode: str,
    want_env: dict[str, str | None],
    want_flags: list[str],
) -> None:
    result = run(env={**smt2_env, "PINSERVE_THREAD_CONFIG": mode})
    assert result.returncode == 0, result.stderr
    assert result.env == want_env
    assert result.argv == [*BASE_ARGV, *want_flags]
    assert result.log["thread_config"] == (mode or "both")


def test_full_argv_order_and_passthrough(run: Runner, smt2_env: dict[str, str]) -> None:
    extra = ("--file_system_poll_wait_seconds=0", "two words", "*", "$HOME", "")
    result = run(
        env={
            **smt2_env,
            "PINSERVE_GRPC_PORT": "9000",
            "PINSERVE_REST_PORT": "9001",
            "PINSERVE_MODEL_NAME": "resnet",
            "PINSERVE_MODEL_BASE_PATH": "/models/resnet",
            "PINSERVE_BATCHING_CONFIG": "/etc/pinserve/batching.pbtxt",
            "PINSERVE_MONITORING_CONFIG": "/etc/pinserve/monitoring.pbtxt",
        },
        args=extra,
    )
    assert result.returncode == 0, result.stderr
    assert result.argv == [
        "--port=9000",
        "--rest_api_port=9001",
        "--model_name=resnet",
        "--model_base_path=/models/resnet",
        *THREAD_FLAGS,
        "--enable_batching=true",
        "--batching_parameters_file=/etc/pinserve/batching.pbtxt",
        "--monitoring_config_file=/etc/pinserve/monitoring.pbtxt",
        *extra,
    ]


def test_empty_optional_paths_add_no_flags(run: Runner, smt2_env: dict[str, str]) -> None:
    env = {**smt2_env, "PINSERVE_BATCHING_CONFIG": "", "PINSERVE_MONITORING_CONFIG": ""}
    env |= {"PINSERVE_MODEL_NAME": "", "PINSERVE_MODEL_BASE_PATH": "", "PINSERVE_THREAD_CONFIG": "env"}
    result = run(env=env, args=("--model_config_file=/etc/models.config",))
    assert result.returncode == 0, result.stderr
    assert result.argv == ["--port=8500", "--rest_api_port=8501", "--model_config_file=/etc/models.config"]


def test_user_set_omp_is_kept_and_drives_intra(run: Runner, smt2_env: dict[str, str]) -> None:
    for mode in ("both", "flags"):
        result = run(env={**smt2_env, "OMP_NUM_THREADS": "3", "PINSERVE_THREAD_CONFIG": mode})
        assert result.returncode == 0, result.stderr
        log = result.log
        assert log["user_set"] == "OMP_NUM_THREADS"
        assert (log["OMP_NUM_THREADS"], log["TENSORFLOW_INTRA_OP_PARALLELISM"]) == ("3", "3")
        assert log["physical_cores"] == "2"  # what the pod got is still reported truthfully
        assert result.env["OMP_NUM_THREADS"] == "3"
        assert "--tensorflow_intra_op_parallelism=3" in result.argv
        assert "--tensorflow_inter_op_parallelism=2" in result.argv
    assert result.env["TENSORFLOW_INTRA_OP_PARALLELISM"] is None  # flags mode exports nothing


def test_user_set_intra_drives_omp(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "TENSORFLOW_INTRA_OP_PARALLELISM": "5"})
    assert result.returncode == 0, result.stderr
    assert result.log["user_set"] == "TENSORFLOW_INTRA_OP_PARALLELISM"
    assert result.env["OMP_NUM_THREADS"] == "5"
    assert "--tensorflow_intra_op_parallelism=5" in result.argv


def test_all_user_values_kept(run: Runner, smt2_env: dict[str, str]) -> None:
    user = {
        "OMP_NUM_THREADS": "6",
        "TENSORFLOW_INTRA_OP_PARALLELISM": "7",
        "TENSORFLOW_INTER_OP_PARALLELISM": "4",
        "KMP_AFFINITY": "granularity=core, scatter",
        "KMP_BLOCKTIME": "0",
        "KMP_SETTINGS": "1",
    }
    result = run(env={**smt2_env, **user})
    assert result.returncode == 0, result.stderr
    assert result.env == user
    log = result.log
    assert log["user_set"] == ",".join(THREAD_VARS)
    assert log["KMP_AFFINITY"] == "granularity=core,_scatter"  # whitespace shown as "_"
    assert (log["KMP_BLOCKTIME"], log["KMP_SETTINGS"]) == ("0", "1")
    assert result.argv[-2:] == ["--tensorflow_intra_op_parallelism=7", "--tensorflow_inter_op_parallelism=4"]


def test_user_set_inter_op_is_not_capped(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path) -> None:
    env = snapshot_env(snapshots["8em64t-2s2ca2c"], status_file(tmp_path, "3"))
    result = run(env={**env, "TENSORFLOW_INTER_OP_PARALLELISM": "4"})
    assert result.returncode == 0, result.stderr
    assert result.log["TENSORFLOW_INTER_OP_PARALLELISM"] == "4"
    default = run(env=env)
    assert default.log["TENSORFLOW_INTER_OP_PARALLELISM"] == "1"


def test_empty_user_value_counts_as_unset(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "OMP_NUM_THREADS": ""})
    assert result.log["user_set"] == "none"
    assert result.env["OMP_NUM_THREADS"] == "2"


def test_non_numeric_user_thread_count_fails_clearly_with_flags(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "TENSORFLOW_INTER_OP_PARALLELISM": "two"})
    assert result.returncode == 2
    assert "TENSORFLOW_INTER_OP_PARALLELISM='two'" in result.stderr
    assert result.stdout == ""  # the server never ran
    env_only = run(env={**smt2_env, "TENSORFLOW_INTER_OP_PARALLELISM": "two", "PINSERVE_THREAD_CONFIG": "env"})
    assert env_only.returncode == 0, env_only.stderr
    assert env_only.env["TENSORFLOW_INTER_OP_PARALLELISM"] == "two"


def test_bad_thread_config_fails_clearly(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "PINSERVE_THREAD_CONFIG": "Both"})
    assert result.returncode == 2
    assert "PINSERVE_THREAD_CONFIG='Both'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("planned", "want"), [("2", ("2", "true")), ("4", ("4", "false")), ("", ("none", "unknown"))])
def test_planned_cores_compared(run: Runner, smt2_env: dict[str, str], planned: str, want: tuple[str, str]) -> None:
    result = run(env={**smt2_env, "PINSERVE_PLANNED_CORES": planned})
    assert (result.log["planned_cores"], result.log["planned_match"]) == want


def test_log_line_is_the_only_stderr_output(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "PINSERVE_PLANNED_CORES": "2", "KMP_SETTINGS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")
    assert result.log == {
        "cpus": SMT2,
        "allowed_cpus": "4",
        "counted_cpus": "4",
        "physical_cores": "2",
        "threads_per_core": "2",
        "smt": "true",
        "source": "sysfs",
        "planned_cores": "2",
        "planned_match": "true",
        "OMP_NUM_THREADS": "2",
        "TENSORFLOW_INTRA_OP_PARALLELISM": "2",
        "TENSORFLOW_INTER_OP_PARALLELISM": "2",
        "KMP_AFFINITY": SMT_AFFINITY,
        "KMP_BLOCKTIME": "1",
        "KMP_SETTINGS": "1",
        "user_set": "KMP_SETTINGS",
        "thread_config": "both",
    }


# --- rendering ------------------------------------------------------------------------------------------


def test_rendered_defaults_are_used(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path) -> None:
    script = tmp_path / "custom.sh"
    script.write_text(render_start_script(default_inter_op=4, default_kmp_blocktime=0))
    snap = snapshots["8em64t-2s2ca2c"]
    wide = run(env=snapshot_env(snap, status_file(tmp_path, "0-7")), script=script)
    assert wide.returncode == 0, wide.stderr
    assert (wide.env["TENSORFLOW_INTER_OP_PARALLELISM"], wide.env["KMP_BLOCKTIME"]) == ("4", "0")
    narrow = run(env=snapshot_env(snap, status_file(tmp_path, "0-2")), script=script)
    assert narrow.env["TENSORFLOW_INTER_OP_PARALLELISM"] == "3"


@pytest.mark.parametrize(
    "kwargs",
    [{"default_inter_op": 0}, {"default_inter_op": True}, {"default_kmp_blocktime": -1}],
)
def test_render_rejects_bad_defaults(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="default_"):
        render_start_script(**kwargs)


def test_script_shape() -> None:
    text = render_start_script()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text
    assert text.endswith("\n")
    assert "{{" not in text and "}}" not in text


def test_script_syntax_and_lint(script_path: Path) -> None:
    checkers: list[list[str]] = [["/bin/sh", "-n", str(script_path)]]
    checkers += [[*s, "-n", str(script_path)] for s in SHELLS[1:]]
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        checkers.append([shellcheck, "-s", "sh", str(script_path)])
    else:
        warnings.warn("shellcheck not installed: only `sh -n` syntax checks ran", stacklevel=1)
    for cmd in checkers:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
