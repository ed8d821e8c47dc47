#!/usr/bin/env bash
# Run scripts/gpu_check.sh here the way the GPU machine runs it, without a GPU:
#
#   scripts/gpu_sim.sh [OUTDIR]        # OUTDIR defaults to var/gpu-sim
#
# - Python 3.12 with torch and only the GPU image's packages (scripts/gpu_image_packages.txt):
#   a venv built once and kept in GPU_SIM_VENV (default ~/.cache/bnlenet/gpu-sim-venv; the first
#   build downloads torch, about 1.5 minutes here), checked to hold nothing the image lacks;
# - the project not installed, and only what a call carries: a copy of the files git would send
#   (tracked, and untracked ones not ignored) plus .whl/ and .gpu-data/ (filled by
#   scripts/gpu_wheels.sh when missing), at most 64 MiB;
# - no Debian dataset and no system redis-server: a private mount namespace (unshare, as root)
#   lays an empty tmpfs over /usr/share/datasets and /dev/null over any redis-server on PATH;
# - a bare environment (no PYTHONPATH, a fresh HOME), OUT set, GPU_CHECK_ALLOW_CPU=1.
# It then checks what the GPU machine would give back: at most 8 files, 16 MiB each, within 8 minutes.
# tests/bench/test_gpu_check.py runs it in CI (marked gpu_sim and slow).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-var/gpu-sim}")
venv=${GPU_SIM_VENV:-$HOME/.cache/bnlenet/gpu-sim-venv}
say() { echo "== gpu_sim $(date -u +%H:%M:%S) $*"; }
fail() { echo "gpu_sim: $*" >&2; exit 1; }

# The image's packages the check uses (their own needs come along and are checked below), at the
# versions seen on the image where known; torch and torchvision at the project's pins (the image
# has its own matching pair).
torch_pin=$(grep -oE '"torch(vision)?==[^"]*"' pyproject.toml | tr -d '"' | tr '\n' ' ')
FROM_IMAGE=(
    "numpy==2.5.2" pillow "safetensors==0.8.0" httpx pytest pyyaml tqdm "onnx==1.23.1" "onnx-ir==1.0.0"
    "onnxscript==0.7.2" "onnxruntime==1.30.0" prometheus-client protobuf uvloop click h11 anyio
    annotated-doc typing-extensions "python-dateutil==2.9.0.post0" packaging psutil setuptools
)  # python-dateutil 3 and later need tzdata, which the image lacks: its dateutil is older
image=$(grep -v '^#' scripts/gpu_image_packages.txt | tr 'A-Z_.' 'a-z--')

find_python312() {  # GPU_SIM_PYTHON, else pyenv's newest 3.12, else python3.12 on PATH (if it runs)
    local c
    for c in ${GPU_SIM_PYTHON:-} $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null \
            | sort -rV) $(command -v python3.12 || true); do
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then echo "$c"; return; fi
    done
}

wanted="$torch_pin${FROM_IMAGE[*]}"
if [ "$(cat "$venv/.gpu-sim-stamp" 2>/dev/null)" != "$wanted" ]; then
    python312=$(find_python312)
    [ -n "$python312" ] || fail "no Python 3.12 here (set GPU_SIM_PYTHON, or install one: pyenv install 3.12)"
    say "building $venv with $python312: $wanted"
    start=$SECONDS
    rm -rf "$venv"
    "$python312" -m venv "$venv"
    # shellcheck disable=SC2086 # two pins
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $torch_pin "${FROM_IMAGE[@]}" 2>&1 \
        | { grep -v '^WARNING: Location' || true; }
    echo "$wanted" > "$venv/.gpu-sim-stamp"
    say "built in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
fi
# Nothing in the stand-in that the image lacks: else the check could lean on it and fail there.
extra=$("$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    | cut -d= -f1 | tr 'A-Z_.' 'a-z--' | grep -vxF -f <(echo "$image") || true)
[ -z "$extra" ] || fail "the venv holds packages the GPU image lacks: $(echo $extra); rm -rf $venv"

if ! ls .whl/*.whl >/dev/null 2>&1 || ! ls .gpu-data/*.gz >/dev/null 2>&1; then
    say "no .whl/ or .gpu-data/: scripts/gpu_wheels.sh"
    scripts/gpu_wheels.sh
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-sim.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/repo
mkdir -p "$stage" "$work/home"
# The files a call sends, as git lists them (a .venv link stays behind: it points nowhere there).
git ls-files -z --cached --others --exclude-standard | grep -zvx '\.venv' \
    | tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$stage"
cp -r .whl .gpu-data "$stage/"
carried=$(du -sb "$stage" | cut -f1)
say "carried $((carried / 1024)) KiB (tree, .whl/ $(du -sh .whl | cut -f1), .gpu-data/ $(du -sh .gpu-data | cut -f1)); the limit is 65536 KiB"
[ "$carried" -le $((64 << 20)) ] || fail "over the 64 MiB a call carries"

rm -rf "$out" && mkdir -p "$out"
say "scripts/gpu_check.sh in a private mount namespace, output in $out"
start=$SECONDS
set +e
unshare --mount --propagation private bash -s -- "$stage" "$out" "$venv" "$work" <<'INNER'
set -e
stage=$1 out=$2 venv=$3 work=$4
if [ -d /usr/share/datasets ]; then mount -t tmpfs -o size=1m,mode=755 gpu-sim-empty /usr/share/datasets; fi
system_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for exe in $(PATH=$system_path which -a redis-server 2>/dev/null); do mount --bind /dev/null "$exe"; done
echo "gpu_sim: /usr/share/datasets holds [$(ls -A /usr/share/datasets 2>/dev/null)]; redis-server on PATH: [$(PATH=$system_path which redis-server 2>/dev/null || true)]"
cd "$stage"
exec env -i HOME="$work/home" PATH="$venv/bin:$system_path" LANG=C.UTF-8 TMPDIR="$work" \
    OUT="$out" GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SITE="$work/site" bash scripts/gpu_check.sh
INNER
rc=$?
set -e
elapsed=$((SECONDS - start))
say "scripts/gpu_check.sh exited $rc after $elapsed s"
[ $rc -eq 0 ] || fail "scripts/gpu_check.sh failed (exit $rc)"

# What the GPU machine gives back: at most 8 files of at most 16 MiB, plain names, within 2 folders.
files=$(cd "$out" && find . -type f | sed 's|^\./||' | sort)
count=$(echo "$files" | grep -c . || true)
say "$count result files: $(echo $files)"
[ "$count" -le 8 ] || fail "$count result files: the GPU machine gives back at most 8"
echo "$files" | grep -qvE '^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+){0,2}$' && fail "a result file's path is not plain: $files"
big=$(find "$out" -type f -size +16M)
[ -z "$big" ] || fail "over 16 MiB: $big"
[ "$elapsed" -le 480 ] || fail "the check took $elapsed s; it must fit 8 minutes"
say "ok"
