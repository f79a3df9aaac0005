#!/bin/bash
# Wheels for a GPU host with no package index whose image already has torch, numpy, pillow, ray-free basics:
#     bash benchmarks/offline_wheels.sh [base] [judge | ann] [cudnn] [fa4]   (PYTHON_VERSION=3.12 by default: the host's Python)
#   base -> .whl/    what the benchmarks import beyond such an image (transformers, diffusers, pydantic, webdataset
#                    and their needs), at constraints.txt's versions
#   ann  -> .whl_ann/  ultralytics and polars (its trainer imports polars when it saves): the learning run's world
#                    GenEval trains its YOLO judge with them; 56 MB, so it travels in a call of its own
#   judge -> .whl/   (after base) ultralytics alone, 1.5 MB: enough where the judge comes trained (`dvc repro`'s
#                    data/world_detector carried), since only ultralytics' trainer imports polars; one call then
#                    installs and starts the learning run (session 23)
#   cudnn -> .whl/   (after base) nvidia-cudnn-frontend alone, 12 MB: the attention backend "cudnn" (its Python
#                    graph API over the cuDNN library that torch brings)
#   fa4  -> .fa4_a/ .fa4_b/   flash-attn-4 and its CuTe DSL (bench_attention's FLASH rows); the 92 MB libs wheel is
#                    split in halves so that each folder travels in one 64 MiB transfer
# Folders are git-ignored; benchmarks/detached_suite.sh installs whichever are present on the host.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON_VERSION:-3.12}
get() { local dir=$1; shift
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"; }
pinned() { for name in "$@"; do grep -i "^${name}==" constraints.txt || { echo "$name not in constraints.txt" >&2; return 1; }; done; }
for set in ${*:-base}; do
  case $set in
    base) wanted=$(pinned diffusers transformers huggingface_hub tokenizers safetensors hf-xet pydantic pydantic_core \
            annotated-types typing-inspection typing_extensions webdataset braceexpand importlib_metadata zipp typer \
            click httpx2 httpcore2 anyio idna h11 truststore)  # a name missing from constraints.txt stops here
          rm -rf .whl && get .whl $wanted
          du -sh .whl ;;
    ann)  wanted=$(pinned ultralytics ultralytics-thop polars polars-runtime-32)
          rm -rf .whl_ann && get .whl_ann $wanted
          du -sh .whl_ann ;;
    judge) [ -d .whl ] || { echo "judge adds to .whl: name base first" >&2; exit 2; }
           get .whl $(pinned ultralytics ultralytics-thop)
           du -sh .whl ;;
    cudnn) [ -d .whl ] || { echo "cudnn adds to .whl: name base first" >&2; exit 2; }
           get .whl $(pinned nvidia-cudnn-frontend)
           du -sh .whl ;;
    fa4)  tmp=$(mktemp -d)
          get "$tmp" flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
            nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 "apache-tvm-ffi<0.2,>=0.1.11" \
            torch-c-dlpack-ext quack-kernels einops "cuda-bindings>=13,<14" cuda-pathfinder protobuf
          rm -rf .fa4_a .fa4_b && mkdir -p .fa4_a .fa4_b
          libs=$(ls "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl)
          md5sum "$libs" | cut -d' ' -f1 >.fa4_b/libs_cu13.md5
          basename "$libs" >.fa4_b/libs_cu13.name
          (cd "$tmp" && split -b 46M "$(basename "$libs")" libs_cu13.part. && rm "$(basename "$libs")")
          mv "$tmp"/libs_cu13.part.aa "$tmp"/flash_attn_4-* "$tmp"/nvidia_cutlass_dsl-* "$tmp"/nvidia_cutlass_dsl_libs_* \
             "$tmp"/einops-* "$tmp"/quack* "$tmp"/torch_c_dlpack* .fa4_a/
          mv "$tmp"/* .fa4_b/ && rmdir "$tmp"
          du -sh .fa4_a .fa4_b ;;
    *) echo "unknown set $set (base, judge, ann, cudnn, fa4)" >&2; exit 2 ;;
  esac
done
