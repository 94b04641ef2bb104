#!/bin/sh
# pinserve start script: size the model server's threads to the CPUs this container may really use,
# then exec the server. Shipped as is in the pinserve package and mounted from the ModelServer's
# ConfigMap; configured by environment only. POSIX sh only (dash, busybox), because the serving
# image's shell is not ours to choose.
#
# Input (environment; empty counts as unset):
#   PINSERVE_MODEL_NAME            --model_name (omitted when empty, e.g. a --model_config_file in args)
#   PINSERVE_MODEL_BASE_PATH       --model_base_path (omitted when empty)
#   PINSERVE_GRPC_PORT             --port (default 8500)
#   PINSERVE_REST_PORT             --rest_api_port (default 8501)
#   PINSERVE_SERVER_BINARY         program to exec (default tensorflow_model_server)
#   PINSERVE_THREAD_CONFIG         env | flags | both (default both):
#                                    env   export the thread variables only
#                                    flags pass --tensorflow_{intra,inter}_op_parallelism only
#                                    both  do both
#   PINSERVE_BATCHING_CONFIG       path; adds --enable_batching=true --batching_parameters_file=PATH
#   PINSERVE_MONITORING_CONFIG     path; adds --monitoring_config_file=PATH
#   PINSERVE_PLANNED_CORES         cores the operator planned; only compared and logged
#   PINSERVE_DEFAULT_INTER_OP      inter-op threads unless the user set them (default 2, whole number >= 1)
#   PINSERVE_DEFAULT_KMP_BLOCKTIME KMP_BLOCKTIME unless the user set it (default 1, whole number >= 0)
#   PINSERVE_CPU_LIMIT             the container's limits.cpu in millicores (downward API, divisor 1m)
# Where things are read (overridable for tests):
#   PINSERVE_SYSFS_ROOT            sysfs root (default /sys)
#   PINSERVE_PROC_STATUS           status file holding Cpus_allowed_list (default /proc/self/status)
#   PINSERVE_PROC_CGROUP           the process's cgroup membership (default /proc/self/cgroup)
#   PINSERVE_PROC_MOUNTINFO        its mount table (default /proc/self/mountinfo)
#   PINSERVE_CGROUP_ROOT           where cgroupfs is mounted when the mount table names no cgroup
#                                  mount (default /sys/fs/cgroup; v1 under cpu/ or cpu,cpuacct/)
#   PINSERVE_LIBRARY_ROOT          prefix of every library directory searched for libiomp5 (default none)
# The container's args ("$@") are appended after pinserve's flags.
#
# Counting: a physical core is (physical_package_id, die_id, core_id, thread_siblings) of an allowed
# CPU. thread_siblings is part of the key because old kernels without die_id reuse core_id across the
# dies/nodes of one package (AMD Opteron 6200). Allowed CPUs without a topology directory, or whose
# online file reads 0, are offline and ignored. If no topology can be read, cores = allowed CPUs.
#
# Bounding: never more threads than CPUs the container may use. Without the static CPU manager the
# affinity is the whole host and only the CPU quota bounds the container, so the physical cores
# counted above are capped by the smallest of
#   cfs-quota   ceil(quota / period) of the container's cgroup and its ancestors up to the mount:
#               v2 cpu.max ("max 100000" = none, "400000 100000" = 4), v1 cpu.cfs_quota_us (-1 = none)
#               over cpu.cfs_period_us; the cgroup comes from /proc/self/cgroup, its mount from
#               /proc/self/mountinfo
#   limits.cpu  ceil(PINSERVE_CPU_LIMIT / 1000)
# each at least 1. When a bound caps the cores, KMP_AFFINITY defaults to "none": pinning OpenMP
# threads "compactly" to the first CPUs of a host the container does not own would stack every such
# pod on the same CPUs.
#
# OpenMP: stock TF Serving (2.9+) runs oneDNN on Eigen's thread pool, where only the
# --tensorflow_*_op_parallelism flags count. OMP_NUM_THREADS and KMP_* matter only where Intel's
# OpenMP runtime is present (the mkl image copies libiomp5.so to /usr/local/lib), so they are
# exported only when libiomp5.so is found in LD_LIBRARY_PATH or the usual library directories.
#
# Output (env/both modes export, unless already set to a non-empty value, which is kept):
#   OMP_NUM_THREADS                  physical cores (or the user's TENSORFLOW_INTRA_OP_PARALLELISM);
#                                    only with libiomp5
#   TENSORFLOW_INTRA_OP_PARALLELISM  physical cores (or the user's OMP_NUM_THREADS)
#   TENSORFLOW_INTER_OP_PARALLELISM  PINSERVE_DEFAULT_INTER_OP, capped at the usable CPUs
#   KMP_AFFINITY                     granularity=fine,compact,1,0 with SMT, else granularity=fine,compact;
#                                    none when capped; only with libiomp5
#   KMP_BLOCKTIME                    PINSERVE_DEFAULT_KMP_BLOCKTIME; only with libiomp5
#   KMP_SETTINGS                     never set here; logged as is
# The flags use the same final numbers. Note the mkl image's own entrypoint is what turns
# TENSORFLOW_*_PARALLELISM into flags; tensorflow_model_server itself ignores them, so "env" only
# reaches the OpenMP/KMP runtime when this script execs the binary directly.
#
# Log: exactly one line on stderr (stdout stays the server's), space-separated key=value, every key
# always present, in this order; whitespace inside a value is shown as "_":
#   pinserve: cpus=<list|unknown> allowed_cpus=<n> counted_cpus=<n> physical_cores=<n>
#     threads_per_core=<n> smt=<true|false> source=<sysfs|allowed-cpus|nproc>
#     planned_cores=<n|none> planned_match=<true|false|unknown> OMP_NUM_THREADS=<v>
#     TENSORFLOW_INTRA_OP_PARALLELISM=<v> TENSORFLOW_INTER_OP_PARALLELISM=<v> KMP_AFFINITY=<v>
#     KMP_BLOCKTIME=<v> KMP_SETTINGS=<v|unset> user_set=<NAME,NAME|none> thread_config=<mode>
#     affinity_cores=<n> cgroup=<v2|v1|none> quota_cpus=<n|none> limit_cpus=<n|none>
#     cpu_bound=<affinity|cfs-quota|limits.cpu> capped=<true|false> openmp=<libiomp5|none>
# source: sysfs = counted from topology; allowed-cpus = topology unreadable, each allowed CPU taken as
# a core; nproc = Cpus_allowed_list unreadable, nproc's count used. physical_cores is what the
# threads are sized to: the cores counted in the affinity (affinity_cores), capped by the bound;
# threads_per_core and smt describe the affinity. cgroup: which hierarchy gave the quota files.
# cpu_bound: what limited physical_cores (cfs-quota wins a tie: the kernel enforces it).
# openmp: whether OMP_*/KMP_* were exported (libiomp5) or left alone (none); they are logged either way.
set -eu

die() {
    printf 'pinserve: error: %s\n' "$1" >&2
    exit 2
}

# Whole non-negative number, as the server's flags and the arithmetic below need.
is_uint() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
    esac
    return 0
}

is_posint() {
    is_uint "$1" && [ "$1" -gt 0 ]
}

# File content without NUL bytes (some kernels pad sysfs files) or whitespace; empty if unreadable.
read_clean() {
    if [ -r "$1" ]; then
        tr -d '\000\n\r\t ' <"$1" 2>/dev/null || true
    fi
}

# Keeps the log line splittable on spaces.
logval() {
    printf '%s' "$1" | tr ' \t\n\r' '____'
}

sysfs_root=${PINSERVE_SYSFS_ROOT:-/sys}
status_file=${PINSERVE_PROC_STATUS:-/proc/self/status}
thread_config=${PINSERVE_THREAD_CONFIG:-both}
case $thread_config in
    env | flags | both) ;;
    *) die "PINSERVE_THREAD_CONFIG='$thread_config' must be env, flags or both" ;;
esac
default_inter=${PINSERVE_DEFAULT_INTER_OP:-2}
is_posint "$default_inter" || die "PINSERVE_DEFAULT_INTER_OP='$default_inter' must be a whole number >= 1"
default_blocktime=${PINSERVE_DEFAULT_KMP_BLOCKTIME:-1}
is_uint "$default_blocktime" || die "PINSERVE_DEFAULT_KMP_BLOCKTIME='$default_blocktime' must be a whole number >= 0"

# --- which CPUs may we run on ---------------------------------------------------------------------
cpus=
if [ -r "$status_file" ]; then
    cpus=$(tr -d '\000' <"$status_file" | sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' | tr -d ' \t\r\n') || cpus=
fi
case $cpus in
    *[!0-9,-]*) cpus= ;; # not a kernel cpu list; treat as unreadable
esac

cpu_ids=
allowed=0
if [ -n "$cpus" ]; then
    saved_ifs=$IFS
    IFS=,
    for part in $cpus; do
        case $part in
            '') continue ;;
            *-*)
                lo=${part%%-*}
                hi=${part#*-}
                ;;
            *)
                lo=$part
                hi=$part
                ;;
        esac
        if ! is_uint "$lo" || ! is_uint "$hi"; then
            cpu_ids=
            allowed=0
            break
        fi
        i=$lo
        while [ "$i" -le "$hi" ]; do
            cpu_ids="$cpu_ids $i"
            allowed=$((allowed + 1))
            i=$((i + 1))
        done
    done
    IFS=$saved_ifs
fi

# --- count physical cores among them --------------------------------------------------------------
seen=' '
cores=0
counted=0
smt=false
for n in $cpu_ids; do
    cpu_dir=$sysfs_root/devices/system/cpu/cpu$n
    [ -d "$cpu_dir/topology" ] || continue
    if [ -e "$cpu_dir/online" ] && [ "$(read_clean "$cpu_dir/online")" = 0 ]; then
        continue
    fi
    # One subshell per CPU, not one per file: a 96-CPU pod should not wait on hundreds of forks.
    key=$(
        cd "$cpu_dir/topology" 2>/dev/null || exit 0
        for f in core_id physical_package_id die_id thread_siblings; do
            if [ -r "$f" ]; then
                tr -d '\000\n\r\t ' <"$f" 2>/dev/null || true
            fi
            printf '/'
        done
    )
    case $key in
        '' | /*) key="cpu$n" ;; # no core_id: never merge it with anything, so threads are not under-counted
    esac
    counted=$((counted + 1))
    case $seen in
        *" $key "*) smt=true ;;
        *)
            seen="$seen$key "
            cores=$((cores + 1))
            ;;
    esac
done

if [ "$cores" -gt 0 ]; then
    count_source='sysfs'
elif [ "$allowed" -gt 0 ]; then
    count_source='allowed-cpus'
    cores=$allowed
    counted=$allowed
else
    count_source='nproc'
    cpus=unknown
    allowed=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    is_posint "$allowed" || allowed=1
    cores=$allowed
    counted=$allowed
fi
threads_per_core=$(((counted + cores - 1) / cores))
affinity_cores=$cores

# --- the CPU quota: cgroup v2 cpu.max or v1 cpu.cfs_quota_us, of our cgroup and its ancestors -------
quota_cpus=none
cgroup=none

# Narrows quota_cpus to ceil($1 / $2); anything but two positive whole numbers ("max", -1) is no limit.
take_quota() {
    if is_posint "$1" && is_posint "$2"; then
        q=$((($1 + $2 - 1) / $2))
        [ "$q" -ge 1 ] || q=1
        if [ "$quota_cpus" = none ] || [ "$q" -lt "$quota_cpus" ]; then
            quota_cpus=$q
        fi
    fi
}

# The directory of cgroup path $3 inside a mount of that hierarchy at $1 whose root is $2. When the
# path is not below the mount's root (a cgroup namespace shows "/" while the mount root is the host's
# path, or the other way round), the mount point itself is our cgroup.
cgroup_dir() {
    case $2 in
        /) rel=$3 ;;
        *)
            case $3 in
                "$2"/*) rel=${3#"$2"} ;;
                *) rel= ;;
            esac
            ;;
    esac
    dir=${1%/}${rel%/}
    [ -n "$dir" ] || dir=/
    [ -d "$dir" ] || dir=$1
}

# Reads $3 (v2: "cpu.max"; v1: "cpu.cfs_quota_us") in every directory from $1 up to the mount $2;
# sets found=true when at least one such file was readable.
scan_quota() {
    d=$1
    while :; do
        if [ -r "$d/$3" ]; then
            found=true
            qa=
            qb=
            if [ "$3" = cpu.max ]; then
                read -r qa qb _rest <"$d/cpu.max" 2>/dev/null || true
            else
                read -r qa _rest <"$d/cpu.cfs_quota_us" 2>/dev/null || true
                read -r qb _rest <"$d/cpu.cfs_period_us" 2>/dev/null || true
            fi
            take_quota "$qa" "$qb"
        fi
        [ "$d" != "$2" ] || break
        d=${d%/*}
        case $d in
            "$2" | "$2"/*) ;;
            *) break ;;
        esac
    done
}

proc_cgroup=${PINSERVE_PROC_CGROUP:-/proc/self/cgroup}
mountinfo=${PINSERVE_PROC_MOUNTINFO:-/proc/self/mountinfo}
cgroup_root=${PINSERVE_CGROUP_ROOT:-/sys/fs/cgroup}
v2_path=/
v1_path=/
if [ -r "$proc_cgroup" ]; then
    # "0::/path" is the unified (v2) hierarchy; "N:cpu,cpuacct:/path" a v1 one.
    while IFS= read -r line; do
        hier=${line%%:*}
        rest=${line#*:}
        controllers=${rest%%:*}
        if [ "$hier" = 0 ] && [ -z "$controllers" ]; then
            v2_path=${rest#*:}
        else
            case ,$controllers, in
                *,cpu,*) v1_path=${rest#*:} ;;
            esac
        fi
    done <"$proc_cgroup"
fi
v2_mount=
v2_root=/
v1_mount=
v1_root=/
if [ -r "$mountinfo" ]; then
    # id parent major:minor root mount-point options [optional fields...] - fstype source super-options
    while IFS=' ' read -r _id _parent _dev mnt_root mnt_point rest; do
        fs=${rest#* - }
        [ "$fs" != "$rest" ] || continue
        fstype=${fs%% *}
        super=${fs#* }
        super=${super#* }
        case $fstype in
            cgroup2)
                if [ -z "$v2_mount" ]; then
                    v2_mount=$mnt_point
                    v2_root=$mnt_root
                fi
                ;;
            cgroup)
                case ,$super, in
                    *,cpu,*)
                        if [ -z "$v1_mount" ]; then
                            v1_mount=$mnt_point
                            v1_root=$mnt_root
                        fi
                        ;;
                esac
                ;;
        esac
    done <"$mountinfo"
fi
if [ -z "$v2_mount" ] && [ -z "$v1_mount" ]; then
    # No mount table: the usual places, as a container sees its own cgroup at the mount's root.
    v2_mount=$cgroup_root
    for candidate in "$cgroup_root/cpu" "$cgroup_root/cpu,cpuacct"; do
        if [ -z "$v1_mount" ] && [ -r "$candidate/cpu.cfs_quota_us" ]; then
            v1_mount=$candidate
        fi
    done
    v2_path=/
    v1_path=/
    v2_root=/
    v1_root=/
fi
found=false
if [ -n "$v2_mount" ]; then
    cgroup_dir "$v2_mount" "$v2_root" "$v2_path"
    scan_quota "$dir" "$v2_mount" cpu.max
    [ "$found" = false ] || cgroup=v2
fi
# A hybrid host mounts cgroup2 without the cpu controller: then the quota lives in v1.
if [ "$found" = false ] && [ -n "$v1_mount" ]; then
    cgroup_dir "$v1_mount" "$v1_root" "$v1_path"
    scan_quota "$dir" "$v1_mount" cpu.cfs_quota_us
    [ "$found" = false ] || cgroup=v1
fi

# --- the downward API's limits.cpu, in millicores ----------------------------------------------------
limit_cpus=none
if is_posint "${PINSERVE_CPU_LIMIT:-}"; then
    limit_cpus=$(((PINSERVE_CPU_LIMIT + 999) / 1000))
fi

# --- cap the cores by the smallest bound -------------------------------------------------------------
# usable: CPUs the threads may use, those counted in the affinity or fewer under a quota or limit.
usable=$counted
usable_by=affinity
if [ "$quota_cpus" != none ] && [ "$quota_cpus" -lt "$usable" ]; then
    usable=$quota_cpus
    usable_by=cfs-quota
fi
if [ "$limit_cpus" != none ] && [ "$limit_cpus" -lt "$usable" ]; then
    usable=$limit_cpus
    usable_by=limits.cpu
fi
cpu_bound=affinity
capped=false
if [ "$usable" -lt "$cores" ]; then
    cores=$usable
    cpu_bound=$usable_by
    capped=true
fi

planned=${PINSERVE_PLANNED_CORES:-}
if [ -z "$planned" ]; then
    planned=none
    planned_match=unknown
elif is_uint "$planned" && [ "$planned" -eq "$cores" ]; then
    planned_match=true
else
    planned_match=false
fi

# --- Intel's OpenMP runtime: only then do OMP_*/KMP_* reach anything ----------------------------------
lib_root=${PINSERVE_LIBRARY_ROOT:-}
openmp=none
saved_ifs=$IFS
IFS=:
set -f # LD_LIBRARY_PATH is split on ":" only, never globbed
for libdir in ${LD_LIBRARY_PATH:-} /usr/local/lib /usr/local/lib64 /usr/lib /usr/lib64 /lib /lib64 \
    /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /lib/aarch64-linux-gnu; do
    if [ -n "$libdir" ] && [ -e "$lib_root$libdir/libiomp5.so" ]; then
        openmp=libiomp5
        break
    fi
done
set +f
IFS=$saved_ifs

# --- final thread settings: the user's explicit values win -----------------------------------------
user_set=
note_user() {
    user_set="${user_set:+$user_set,}$1"
}

if [ -n "${OMP_NUM_THREADS:-}" ]; then
    omp=$OMP_NUM_THREADS
    note_user OMP_NUM_THREADS
elif is_posint "${TENSORFLOW_INTRA_OP_PARALLELISM:-}"; then
    omp=$TENSORFLOW_INTRA_OP_PARALLELISM # one thread count the user chose, applied to both pools
else
    omp=$cores
fi

if [ -n "${TENSORFLOW_INTRA_OP_PARALLELISM:-}" ]; then
    intra=$TENSORFLOW_INTRA_OP_PARALLELISM
    note_user TENSORFLOW_INTRA_OP_PARALLELISM
elif is_posint "${OMP_NUM_THREADS:-}"; then
    intra=$OMP_NUM_THREADS
else
    intra=$cores
fi

if [ -n "${TENSORFLOW_INTER_OP_PARALLELISM:-}" ]; then
    inter=$TENSORFLOW_INTER_OP_PARALLELISM
    note_user TENSORFLOW_INTER_OP_PARALLELISM
else
    # More inter-op pools than CPUs only adds contention.
    inter=$default_inter
    [ "$inter" -le "$usable" ] || inter=$usable
fi

if [ -n "${KMP_AFFINITY:-}" ]; then
    kmp_affinity=$KMP_AFFINITY
    note_user KMP_AFFINITY
elif [ "$capped" = true ]; then
    kmp_affinity=none # the host's CPUs are not ours: let the kernel place the threads
elif [ "$smt" = true ]; then
    # One OpenMP thread per core: spread over cores first, siblings last.
    kmp_affinity=granularity=fine,compact,1,0
else
    kmp_affinity=granularity=fine,compact
fi

if [ -n "${KMP_BLOCKTIME:-}" ]; then
    kmp_blocktime=$KMP_BLOCKTIME
    note_user KMP_BLOCKTIME
else
    kmp_blocktime=$default_blocktime
fi

if [ -n "${KMP_SETTINGS:-}" ]; then
    kmp_settings=$KMP_SETTINGS
    note_user KMP_SETTINGS
else
    kmp_settings='unset'
fi

if [ "$thread_config" != env ]; then
    # The server would reject these flags anyway; fail with the variable's name instead.
    is_uint "$intra" || die "TENSORFLOW_INTRA_OP_PARALLELISM='$intra' is not a whole number"
    is_uint "$inter" || die "TENSORFLOW_INTER_OP_PARALLELISM='$inter' is not a whole number"
fi

if [ "$thread_config" != flags ]; then
    export TENSORFLOW_INTRA_OP_PARALLELISM="$intra"
    export TENSORFLOW_INTER_OP_PARALLELISM="$inter"
    if [ "$openmp" != none ]; then
        export OMP_NUM_THREADS="$omp"
        export KMP_AFFINITY="$kmp_affinity"
        export KMP_BLOCKTIME="$kmp_blocktime"
    fi
fi

printf 'pinserve: cpus=%s allowed_cpus=%s counted_cpus=%s physical_cores=%s threads_per_core=%s smt=%s source=%s planned_cores=%s planned_match=%s OMP_NUM_THREADS=%s TENSORFLOW_INTRA_OP_PARALLELISM=%s TENSORFLOW_INTER_OP_PARALLELISM=%s KMP_AFFINITY=%s KMP_BLOCKTIME=%s KMP_SETTINGS=%s user_set=%s thread_config=%s affinity_cores=%s cgroup=%s quota_cpus=%s limit_cpus=%s cpu_bound=%s capped=%s openmp=%s\n' \
    "$cpus" "$allowed" "$counted" "$cores" "$threads_per_core" "$smt" "$count_source" \
    "$(logval "$planned")" "$planned_match" "$(logval "$omp")" "$(logval "$intra")" "$(logval "$inter")" \
    "$(logval "$kmp_affinity")" "$(logval "$kmp_blocktime")" "$(logval "$kmp_settings")" \
    "${user_set:-none}" "$thread_config" "$affinity_cores" "$cgroup" "$quota_cpus" "$limit_cpus" \
    "$cpu_bound" "$capped" "$openmp" >&2

# --- exec the server: build argv back to front so "$@" (the container's args) stays last ------------
if [ -n "${PINSERVE_MONITORING_CONFIG:-}" ]; then
    set -- "--monitoring_config_file=$PINSERVE_MONITORING_CONFIG" "$@"
fi
if [ -n "${PINSERVE_BATCHING_CONFIG:-}" ]; then
    set -- --enable_batching=true "--batching_parameters_file=$PINSERVE_BATCHING_CONFIG" "$@"
fi
if [ "$thread_config" != env ]; then
    set -- "--tensorflow_intra_op_parallelism=$intra" "--tensorflow_inter_op_parallelism=$inter" "$@"
fi
if [ -n "${PINSERVE_MODEL_BASE_PATH:-}" ]; then
    set -- "--model_base_path=$PINSERVE_MODEL_BASE_PATH" "$@"
fi
if [ -n "${PINSERVE_MODEL_NAME:-}" ]; then
    set -- "--model_name=$PINSERVE_MODEL_NAME" "$@"
fi
set -- "--port=${PINSERVE_GRPC_PORT:-8500}" "--rest_api_port=${PINSERVE_REST_PORT:-8501}" "$@"
exec "${PINSERVE_SERVER_BINARY:-tensorflow_model_server}" "$@"
