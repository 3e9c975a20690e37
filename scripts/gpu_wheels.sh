#!/usr/bin/env bash
# The wheels llmtune needs on the GPU machine beyond torch, transformers, peft and accelerate (which it has, with
# what they pull: numpy, pyyaml, tqdm, regex, safetensors, tokenizers, huggingface_hub, psutil, ...), for
# CPython 3.12 on manylinux x86_64, downloaded here into .whl/ (git-ignored through .git/info/exclude).
# The GPU machine reaches no package index: .whl/ travels there with the working tree, 64 MiB in all, so the
# bundle must stay under that; this script fails when it does not.
#
#   bash scripts/gpu_wheels.sh            # here, with the package index: fills .whl/, prints its size
#
# Then on the GPU machine, from the repository root (carry .whl):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
#       export PYTHONPATH=/tmp/site:$PWD && python3 scripts/gpu_check.py --output $OUT/gpu_check.json
#
# Versions are the tested set in constraints.txt. Two things keep the bundle small, both said here so nobody is
# surprised: matplotlib (and pillow, fonttools, kiwisolver, contourpy: ~25 MB) is left out, since it only draws
# loss.png and llmtune skips that plot with a warning where matplotlib is missing; and two wheels are repacked
# without what llmtune never loads: pyarrow (55 MB) without Arrow Flight, the S3 filesystem, C++ headers, sources
# and tests, and the two extra copies of each libarrow_python*.so (symlinks in pyarrow's own tree); pandas without
# its test suite.
# Environment: PYTHON (python3), PYVER (3.12), DEST (.whl), CONSTRAINTS (constraints.txt), LIMIT_MIB (60).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
CONSTRAINTS=${CONSTRAINTS:-constraints.txt}
LIMIT_MIB=${LIMIT_MIB:-60}  # of the 64 MiB that travel; the working tree itself takes the rest

# what llmtune imports itself, then what those pull that torch/transformers/peft/accelerate do not
PACKAGES=(
  datasets sentencepiece gguf rouge_score sacrebleu typer rich
  pyarrow pandas python-dateutil six dill multiprocess xxhash          # datasets
  absl-py nltk joblib defusedxml click                                 # rouge_score (nltk's Porter stemmer)
  portalocker tabulate colorama lxml                                   # sacrebleu
  shellingham annotated-doc pydantic pydantic_core annotated-types typing-inspection  # typer
  markdown-it-py mdurl pygments                                        # rich
)

if [ -d .git/info ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  echo '/.whl/' >> .git/info/exclude
fi

# NAME==VERSION from the constraints file (names compared the way pip does: case and -_. folded)
pins=$("$PYTHON" - "$CONSTRAINTS" "${PACKAGES[@]}" <<'EOF'
import re, sys
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
    if m:
        pins[norm(m.group(1))] = m.group(2)
missing = [p for p in sys.argv[2:] if norm(p) not in pins]
if missing:
    sys.exit(f"not pinned in {sys.argv[1]}: {' '.join(missing)}")
print("\n".join(f"{p}=={pins[norm(p)]}" for p in sys.argv[2:]))
EOF
)

rm -rf "$DEST"
mkdir -p "$DEST"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
for pin in $pins; do
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEST" "$pin" 2>"$build/err"; then
    # no wheel on the index (rouge_score ships an sdist only): build one here, which is right only for pure Python
    echo "building $pin from its sdist"
    "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$build/wheels" "$pin"
    for w in "$build"/wheels/*.whl; do
      case "$w" in
        *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$w" "$DEST"/ ;;
        *) echo "error: $pin built as $(basename "$w"), not a pure-Python wheel; it cannot be built here for $PYVER" >&2
           exit 1 ;;
      esac
    done
  fi
done

"$PYTHON" - "$DEST" <<'EOF'
"""Repack pyarrow and pandas without the parts llmtune never loads; keep RECORD consistent with what is left."""
import re, sys, zipfile
from pathlib import Path

DROP = {
    "pyarrow": re.compile(r"^pyarrow/(include/|src/|tests/|includes/|_pyarrow_cpp_tests\.|_flight\.|_s3fs\."
                          r"|flight\.py$|libarrow_flight\.|libarrow_python_flight\.|libarrow_s3\.|.*\.(pyx|pxd|pxi)$"
                          r"|libarrow_python(_parquet_encryption)?\.so(\.\d+\.\d+\.\d+)?$)"),
    "pandas": re.compile(r"^pandas/tests/"),
}
for package, drop in DROP.items():
    for wheel in Path(sys.argv[1]).glob(f"{package}-*.whl"):
        tmp = wheel.with_suffix(".tmp")
        dropped = 0
        with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                name = info.filename
                if drop.match(name):
                    dropped += info.file_size
                    continue
                data = zin.read(name)
                if name.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(ln for ln in lines if not drop.match(ln.split(",", 1)[0])) + "\n").encode()
                zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
        before = wheel.stat().st_size
        tmp.replace(wheel)
        print(f"{wheel.name}: {before / 2**20:.1f} MiB -> {wheel.stat().st_size / 2**20:.1f} MiB "
              f"(dropped {dropped / 2**20:.0f} MiB unpacked)")
EOF

echo
ls -1 "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$("$PYTHON" -c "print(f'{$total / 2**20:.1f}')")
count=$(ls -1 "$DEST"/*.whl | wc -l)
echo
echo "$count wheels in $DEST: $mib MiB (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "error: over the limit; the working tree and .whl travel to the GPU machine in 64 MiB" >&2
  exit 1
fi
echo
echo "On the GPU machine (carry $DEST), from the repository root:"
echo "  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $DEST/*.whl && export PYTHONPATH=/tmp/site:\$PWD && python3 scripts/gpu_check.py --output \$OUT/gpu_check.json"
