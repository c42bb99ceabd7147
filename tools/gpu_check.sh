#!/usr/bin/env bash
# The GPU check on a bare CUDA machine that received a copy of this repository (the golden vectors ship in it):
#
#     bash tools/gpu_check.sh [tools/cuda_check.py flags, e.g. --budget 420]
#
# 1. makes a virtual environment in $VENV (default /tmp/emvos-venv) that also sees the packages of $PYTHON (default
#    python3), so that a machine's preinstalled PyTorch is used as is;
# 2. times `pip install -r requirements.txt` into it (an offline machine makes pip fail on what is not installed
#    yet; the check still runs when the modules it needs import);
# 3. runs tools/cuda_check.py under `timeout` ($CHECK_TIMEOUT seconds, default 600);
# 4. prints the install time again at the end, next to the check's table; exits with the check's status.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/emvos-venv}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-600}

if ! "$PYTHON" -m venv --system-site-packages "$VENV"; then
    echo "gpu_check: '$PYTHON -m venv' failed; set PYTHON to an interpreter with the venv module" >&2
    exit 2
fi
# --system-site-packages shows the base installation's packages only; when $PYTHON is itself a virtual
# environment, its own site-packages join through a .pth file
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
    > "$site/_parent_site.pth"

start=$EPOCHREALTIME
"$VENV/bin/python" -m pip install --disable-pip-version-check --retries 0 --timeout 15 -q -r requirements.txt
pip_rc=$?
install_s=$("$PYTHON" -c "print(f'{$EPOCHREALTIME - $start:.1f}')")
install="pip install -r requirements.txt: exit $pip_rc in ${install_s} s"
echo "gpu_check: $install"

if ! "$VENV/bin/python" -c 'import torch, torchvision, numpy, PIL, cv2, tqdm, psutil'; then
    echo "gpu_check: the modules the check needs do not import (see above); nothing was checked" >&2
    exit 2
fi
[ "$pip_rc" -ne 0 ] && echo "gpu_check: pip failed (offline?); the check runs with the packages already there"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
timeout -k 20 "$CHECK_TIMEOUT" "$VENV/bin/python" tools/cuda_check.py "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_check: tools/cuda_check.py ran past CHECK_TIMEOUT=${CHECK_TIMEOUT} s and was stopped"
echo "gpu_check: $install; check exit $rc"
exit "$rc"
