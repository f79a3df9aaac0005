#!/bin/bash
# Every GPU figure of docs/measurements.md, one after another, on one GPU:
#     bash benchmarks/run_gpu_suite.sh OUT_DIR [job ...]
#     jobs: cap cap_fp8 cap_fp8_b40 cap_fp8_b64 cap_fp8_flex cap_fp8_kv cap_fp8_kv_b96 cap_fp8_kv_mk cap_fp8_kv_tune cap_inputs cap_base cap_build (needs ray) ann ann_threads ann_inflight ann_build (needs ray)
#           learn learn_long (faster with ray) train_step train_rest attn attn_cudnn train_cudnn train_ref train_master master_check train_graphs train_tuned train_autotune attn_short step_overhead train_cudagraphs grads probe_gpu probe_small probe_small_vae probe_gpu_trainer ddp1
#           scaleout (needs 2 GPUs)
# Each job writes OUT_DIR/<job>.log and its json; OUT_DIR/status lists start, end and exit code of each,
# so a job that fails never hides the ones after it.
set -u
OUT=$(realpath -m "${1:?usage: run_gpu_suite.sh OUT_DIR [job ...]}")
shift
JOBS=${*:-cap cap_fp8 cap_base ann learn}
for job in $JOBS; do
  case $job in cap|cap_fp8|cap_fp8_b40|cap_fp8_b64|cap_fp8_flex|cap_fp8_kv|cap_fp8_kv_b96|cap_fp8_kv_mk|cap_fp8_kv_tune|cap_inputs|cap_base|cap_build|ann|ann_threads|ann_inflight|ann_build|learn|learn_long|train_step|train_rest|attn|attn_cudnn|train_cudnn|train_ref|train_master|master_check|train_graphs|train_tuned|train_autotune|attn_short|step_overhead|train_cudagraphs|grads|probe_gpu|probe_small|probe_small_vae|probe_gpu_trainer|ddp1|scaleout) ;;
    *) echo "unknown job $job; jobs: cap cap_fp8 cap_fp8_b40 cap_fp8_b64 cap_fp8_flex cap_fp8_kv cap_fp8_kv_b96 cap_fp8_kv_mk cap_fp8_kv_tune cap_inputs cap_base cap_build ann ann_threads ann_inflight ann_build learn learn_long train_step train_rest attn attn_cudnn train_cudnn train_ref train_master master_check train_graphs train_tuned train_autotune attn_short step_overhead train_cudagraphs grads probe_gpu probe_small probe_small_vae probe_gpu_trainer ddp1 scaleout" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
trap 'echo "$(date +%T) all done" >>"$OUT/status"' EXIT  # what a poller waits for, however the suite ends
# Wheels installed with pip --target (a bare GPU image) go first, then this checkout.
export PYTHONPATH=${SITE:-/tmp/site}:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step() { local name=$1 rc; shift; echo "$(date +%T) start $name" >>"$OUT/status"
         "$@" >"$OUT/$name.log" 2>&1; rc=$?; echo "$(date +%T) end $name rc=$rc" >>"$OUT/status"; }
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
for job in $JOBS; do
  case $job in
    cap) step cap python3 benchmarks/bench_captioner.py --json "$OUT/cap.json" ;;
    # at fp8's default batch, 96 with the prefill MLPs on 16 images at a time (FP8 halves the weights and the
    # prefill's activations: room for 96 images, whose decode steps share each weight read among more rows)
    cap_fp8) step cap_fp8 python3 benchmarks/bench_captioner.py --quantize fp8 --baseline-images 8 --profile --json "$OUT/cap_fp8.json" ;;
    cap_fp8_b40) step cap_fp8_b40 python3 benchmarks/bench_captioner.py --quantize fp8 --batch 40 --baseline-images 8 --json "$OUT/cap_fp8_b40.json" ;;
    # the default before session 7 (batch 64, whole-batch prefill MLPs: 10.42 img/s, 54.5 GiB on an H200)
    cap_fp8_b64) step cap_fp8_b64 python3 benchmarks/bench_captioner.py --quantize fp8 --batch 64 --baseline-images 8 \
                   --json "$OUT/cap_fp8_b64.json" ;;
    cap_fp8_flex) step cap_fp8_flex python3 benchmarks/bench_captioner.py --quantize fp8 --decode-attention flex --baseline-images 8 --json "$OUT/cap_fp8_flex.json" ;;
    # the KV cache in FP8 (half of a decode step's bytes) at its default batch, 128, and at fp8's 96 for comparison
    cap_fp8_kv) step cap_fp8_kv python3 benchmarks/bench_captioner.py --quantize fp8 --kv-cache fp8 --baseline-images 8 --profile \
                  --json "$OUT/cap_fp8_kv.json" ;;
    cap_fp8_kv_b96) step cap_fp8_kv_b96 python3 benchmarks/bench_captioner.py --quantize fp8 --kv-cache fp8 --batch 96 \
                      --baseline-images 8 --json "$OUT/cap_fp8_kv_b96.json" ;;
    # the same with Inductor's multi-kernel: reductions over up to 16K columns also get a persistent variant (one read
    # of a row, not two), picked by timing at run time; the prefill's SwiGLU + FP8 quantisation (14,336 columns,
    # 4.5 ms an image on the H100 in session 16, ~2x its one-pass bytes) is the one it is for. Session 17 (H100):
    # 12.13 img/s against 12.01 without, prefill 57.7 against 58.7 ms an image: inside the spread of two runs
    cap_fp8_kv_mk) step cap_fp8_kv_mk env TORCHINDUCTOR_MULTI_KERNEL=1 python3 benchmarks/bench_captioner.py \
                     --quantize fp8 --kv-cache fp8 --baseline-images 8 --profile --json "$OUT/cap_fp8_kv_mk.json" ;;
    # the same with the decode step's FP8 GEMM tiles autotuned (does the default tile leave SMs idle at ~100 rows?)
    cap_fp8_kv_tune) step cap_fp8_kv_tune python3 benchmarks/bench_captioner.py --quantize fp8 --kv-cache fp8 \
                       --decode-compile-mode max-autotune --baseline-images 8 --json "$OUT/cap_fp8_kv_tune.json" ;;
    # the batch inputs' host time: the processor's call against ours (ids from the prompt tokenized once)
    cap_inputs) step cap_inputs python3 benchmarks/bench_caption_inputs.py --device cuda ;;
    cap_base) step cap_base python3 benchmarks/bench_captioner.py --image-tokens base --baseline-images 8 --json "$OUT/cap_base.json" ;;
    cap_build) step cap_build python3 benchmarks/bench_caption_build.py --quantize fp8 --kv-cache fp8 --json "$OUT/cap_build.json" ;;
    ann) step ann python3 benchmarks/bench_annotators.py --profile --json "$OUT/ann.json" ;;
    ann_threads) step ann_threads python3 benchmarks/bench_annotators.py --stages depth --pool threads --json "$OUT/ann_threads.json" ;;
    ann_build) step ann_build python3 benchmarks/bench_depth_build.py --json "$OUT/ann_build.json" ;;
    ann_inflight) for k in 1 3; do  # does the depth ratio move with the annotator calls running at once?
                    step ann_inflight$k python3 benchmarks/bench_annotators.py --stages depth --inflight $k --json "$OUT/ann_inflight$k.json"
                  done ;;
    # its data, shards, latents and checkpoints (several GB) go to LEARN_DIR; OUT gets the summary and grid
    # shards on an in-process Ray where it is installed (the same bytes as one process, faster). 1300 steps of
    # `small` at batch 64 take ~6.6 min on an H100 (0.31 s/step measured): inside the issue's 8 minutes, no probe.
    # Since session 7 at the script's σ shift 1 and condition_prob 0.5; session 5's 1300 steps had 3 and 0.
    learn) ray_cpus=0; python3 -c "import ray" 2>/dev/null && ray_cpus=12
           step learn python3 benchmarks/learn_procedural.py --out "${LEARN_DIR:-/tmp/learn}" --scenes 1500 --views 8 \
             --batch 64 --workers 6 --ray-cpus $ray_cpus --steps 1300 --vae-seconds 60
           bash benchmarks/collect_learn.sh "${LEARN_DIR:-/tmp/learn}" "$OUT" learn ;;
    # the steps sized by a probe to 7 minutes of this device, at lr 1e-3 and compiled: `learn`'s 1300 steps at 3e-4
    # (~5 min on an H200) left depth->image blobs in sessions 5 and 7, and session 7's CPU probe
    # (probe_conditioning.py) learned ~1.7x slower at 3e-4 and followed depth clearly only after ~2.5x more steps;
    # its own folder, so nothing of `learn` resumes. Session 8 ran it at LEARN_MINUTES=6: the probe then timed compiles
    # as steps and sized it to 210 steps (fixed since); carry .whl_ann in a call of its own for its world GenEval,
    # or, with data/world_detector carried, nothing more than `offline_wheels.sh base judge`'s .whl
    learn_long) ray_cpus=0; python3 -c "import ray" 2>/dev/null && ray_cpus=12
           # a detector carried from `dvc repro` (data/world_detector) saves the ~3 minutes of training one here;
           # LEARN_T2I_FIRST=0.3: text2image alone for that share of the steps, then the mix (the paper's order);
           # LEARN_T2I_BATCH=512: that stage's batch (a text2image sample has 1/16 of a multiview sample's tokens);
           # LEARN_OBJECTS="1 4": objects per training scene (world GenEval's prompts name 1-4);
           # LEARN_COMPILE_MODE=reduce-overhead: the blocks as CUDA graphs (train.compile_mode);
           # LEARN_MASTER_WEIGHTS=1: bf16 linear weights, fp32 masters in the optimizer (train.master_weights);
           # LEARN_STEPS, LEARN_VAE_STEPS: train and fit the VAE that many steps, not for minutes and seconds (a run
           # sized by time trains more on a faster device: to compare two runs, give the first one's step counts);
           # LEARN_CAPTION_COLOURS: the chance a training caption names colours (world.caption_colours)
           detector=(); [ -f data/world_detector/weights.pt ] && detector=(--world-detector data/world_detector)
           step learn_long python3 benchmarks/learn_procedural.py --out "${LEARN_DIR:-/tmp/learn}_long" --scenes 1500 \
             --views 8 --batch 64 --workers 6 --ray-cpus $ray_cpus --steps ${LEARN_STEPS:-0} \
             --train-minutes ${LEARN_MINUTES:-7} --vae-seconds 60 --vae-steps ${LEARN_VAE_STEPS:-0} \
             --lr 1e-3 --compile --t2i-first ${LEARN_T2I_FIRST:-0} ${LEARN_T2I_BATCH:+--t2i-batch $LEARN_T2I_BATCH} \
             ${LEARN_CAPTION_COLOURS:+--caption-colours $LEARN_CAPTION_COLOURS} \
             --objects ${LEARN_OBJECTS:-2 5} ${LEARN_COMPILE_MODE:+--compile-mode $LEARN_COMPILE_MODE} \
             ${LEARN_MASTER_WEIGHTS:+--master-weights} "${detector[@]}"
           bash benchmarks/collect_learn.sh "${LEARN_DIR:-/tmp/learn}_long" "$OUT" learn_long ;;
    train_step) step train_step python3 benchmarks/bench_train_step.py --profile --extra ;;
    # the compiled rows never measured yet (each row compiles for ~2 minutes: the whole --extra set outlasts a call)
    train_rest) step train_rest python3 benchmarks/bench_train_step.py --modes compile --rows 8view,2.8b ;;
    attn) step attn python3 benchmarks/bench_attention.py --json "$OUT/attn.json" ;;
    # the cap on cuDNN's fused kernel (needs `offline_wheels.sh cudnn`): its output and gradients against the
    # float32 reference beside SDPA and the model's flex kernel, then the train step (the model's auto: cuDNN)
    # against diffusers' Lumina2 and against itself on flex
    attn_cudnn) step attn_cudnn python3 benchmarks/bench_attention.py --only "cudnn,ours" --json "$OUT/attn_cudnn.json" ;;
    train_cudnn) step train_cudnn python3 benchmarks/bench_train_step.py --modes compile --rows lumina,ours,flex --profile ;;
    # a change to the model timed against the code before it (REF_MODEL: that version of model/nextdit.py, e.g.
    # `git show REV:model/nextdit.py > .bench_ref/nextdit_REV.py`, carried), beside diffusers, in two rounds of
    # opposite order, the first profiled; and both models under CUDA graphs (compile mode reduce-overhead, as the
    # trainer's compile_mode offers)
    train_ref) if [ -f "${REF_MODEL:-}" ]; then
                 step train_ref python3 benchmarks/bench_train_step.py --modes compile --rows lumina,ours --rounds 2 \
                   --reference "$REF_MODEL" --profile
               else echo "$(date +%T) skipped train_ref: REF_MODEL names no file" >>"$OUT/status"; fi ;;
    # bf16 linear weights with their fp32 masters in the optimizer (train.master_weights) against ours under plain
    # autocast (master_weights false) and diffusers, and with the trainer's clipping and EMA (trainer: what they cost),
    # then ours under CUDA graphs (session 27: ours 25.78 img/s there, 1.248x)
    train_master) step train_master python3 benchmarks/bench_train_step.py --modes compile \
                    --rows lumina,ours,master,trainer --profile
                  step train_master_graphs python3 benchmarks/bench_train_step.py --modes cudagraphs \
                    --rows lumina,ours,master ;;
    # master weights trained beside autocast and fp32 on the same batches (`small`, 300 steps): the same curve? With
    # the blocks compiled as timed (autocast's fused projections stand aside for bf16 weights), then eager
    master_check) step master_check python3 benchmarks/check_master_weights.py --compile \
                    --json "$OUT/master_check.json"
                  step master_check_eager python3 benchmarks/check_master_weights.py \
                    --json "$OUT/master_check_eager.json" ;;
    train_graphs) step train_graphs python3 benchmarks/bench_train_step.py --modes cudagraphs --rows lumina,ours ;;
    # both with Inductor's block sizes searched per elementwise / reduction kernel (where ours spends most beyond GEMMs)
    train_tuned) step train_tuned python3 benchmarks/bench_train_step.py --modes compile --rows lumina,ours \
                   --coordinate-descent ;;
    # both models under Inductor's max-autotune (tuned GEMMs and fusions), compiles of several minutes each
    train_autotune) step train_autotune python3 benchmarks/bench_train_step.py --modes max-autotune --rows lumina,ours ;;
    # `small` on the learning run's 64-token text2image batches, where Inductor's AUTO flex kernel was flex-decoding
    attn_short) step attn_short python3 benchmarks/bench_attention.py --shape learn_t2i --json "$OUT/attn_short.json" ;;
    # the learning run's host-bound text2image step: default, flex AUTO, C++ wrapper, CUDA graphs
    step_overhead) step step_overhead python3 benchmarks/bench_step_overhead.py --json "$OUT/step_overhead.json" ;;
    train_cudagraphs) step train_cudagraphs python3 benchmarks/bench_train_cudagraphs.py --json "$OUT/train_cudagraphs.json" ;;
    # does the GPU training path (bf16, compiled blocks, flex and cuDNN attention) get the text pathway's
    # gradients right? (the learning run barely reads its prompt where the CPU probes do)
    grads) step grads python3 benchmarks/check_train_grads.py --json "$OUT/grads.json" ;;
    # session 11's CPU probe rows rerun on the GPU path: 1-4 objects, 768-wide captions (CPU: CFG 3 colour 0.655 /
    # 0.785 after 1000 / 2000 steps), and the trainer's loop on 2-5 objects (CPU: 0.370 / 0.481 / 0.525)
    probe_gpu) step probe_gpu python3 benchmarks/probe_text.py --steps 2000 --objects 1 4 --text-dim 768 \
                 --prompt-prefix "[[text2image]]" --device cuda --bf16 --compile --json "$OUT/probe_gpu.json" ;;
    # the same probe at `small`'s shape and the learning run's text2image batch and object size: does the learning
    # run's model, not its data, read the prompt slower (lr 1e-3 as learn_long, then 3e-4)?
    probe_small) for lr in 1e-3 3e-4; do
                   step probe_small_$lr python3 benchmarks/probe_text.py --steps 2000 --eval-every 500 --objects 1 4 \
                     --radius 9 11 --text-dim 768 --width 576 --depth 12 --heads 8 --kv-heads 4 --batch 256 --lr $lr \
                     --prompt-prefix "[[text2image]]" --device cuda --bf16 --compile --json "$OUT/probe_small_$lr.json"
                 done ;;
    # and on the latents of a VAE fitted on the renders (/4: an object over ~2 latent cells, as the learning run's /8
    # at 128²), plainly and with its objects' pixels weighted 50x (learn_procedural's default): session 22 found the
    # learning run's plain VAE turned most objects brown; how fast does `small` learn colour once the latents keep it?
    probe_small_vae) for w in 50 0; do
                       step probe_small_vae_w$w python3 benchmarks/probe_text.py --steps 2000 --eval-every 500 \
                         --objects 1 4 --radius 9 11 --text-dim 768 --width 576 --depth 12 --heads 8 --kv-heads 4 \
                         --batch 256 --vae channel --vae-downsample 4 --vae-steps 4000 --vae-object-weight $w \
                         --prompt-prefix "[[text2image]]" --device cuda --bf16 --compile --json "$OUT/probe_small_vae_w$w.json"
                     done ;;
    probe_gpu_trainer) step probe_gpu_trainer python3 benchmarks/probe_text.py --steps 3000 --objects 2 5 \
                         --prompt-prefix "[[text2image]]" --loop trainer --device cuda --bf16 --compile \
                         --json "$OUT/probe_gpu_trainer.json" ;;
    # the trainer under torchrun with DDP on one GPU, bf16 with master weights (its default there), twice: NCCL, DDP's
    # bf16 buckets and its fp32 gradient hook (the blocks eager, as the default profile runs them), and the run-to-run
    # noise of the loss curve
    ddp1) step ddp1 python3 benchmarks/bench_scaleout.py --gpus 1 --parallel ddp --steps 120 --json "$OUT/ddp1.json" ;;
    scaleout) step scaleout python3 benchmarks/bench_scaleout.py --gpus 2 --steps 120 --json "$OUT/scaleout.json" ;;
  esac
done
