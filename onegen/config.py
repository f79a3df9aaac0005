"""One typed schema for ``params.yaml``, validated at load.

Unknown keys and mistyped values fail with their dotted path and the expected type, so a
typo never silently falls back to a default. Named profiles live in ``onegen/profiles/``;
``params.yaml`` as committed is the ``default`` profile, and ``onegen params --profile paper``
writes another one in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool, Tag, ValidationError,
                      model_validator)

from onegen.hub_cache import check_model_path

PROFILES_DIR = Path(__file__).parent / "profiles"
FAMILIES = ("text2image", "depth", "semantic", "bbox", "multiview", "id", "edges", "pose")
Family = Literal["text2image", "depth", "semantic", "bbox", "multiview", "id", "edges", "pose"]


# Weights: a local path, or hf:<org>/<name>[@rev][/path] in the local Hugging Face cache, looked up where the
# weights are opened (onegen.hub_cache); validation checks its form only
ModelPath = Annotated[Path, BeforeValidator(check_model_path)]


class ConfigError(ValueError):
    """Malformed params; the message names the file and the dotted key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Strict):
    data: Path = Path("data")
    reports: Path = Path("reports")


class WorldConfig(_Strict):
    """The procedural world: seeded scenes of primitives rendered by our ray caster."""

    enabled: bool = True
    scenes: int = Field(64, ge=0, description="multi-view scenes (orbit rigs)")
    views_per_scene: int = Field(4, ge=1, le=12, description="cameras per orbit rig (paper: 4-12)")
    id_groups: int = Field(16, ge=0, description="object identities, each shown in several scenes")
    id_views: tuple[int, int] = Field((2, 5), description="min/max scenes per identity (paper: 2-5)")
    resolution: int = Field(128, ge=16, multiple_of=8)
    min_objects: int = Field(2, ge=1)
    max_objects: int = Field(5, ge=1)
    fov_deg: float = Field(50.0, gt=0, lt=180)
    caption_colours: float = Field(
        0.7, ge=0, le=1, description="the chance that a view's caption names colours; otherwise shapes alone "
        "('two spheres'), as GenEval's single-object, two-object, counting and position prompts read")
    records_per_shard: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        if not 1 <= self.id_views[0] <= self.id_views[1]:
            raise ValueError("id_views must be (min, max) with 1 <= min <= max")
        return self


class SourceConfig(_Strict):
    """An external image source (T2I photos, ID folders, multiview scenes ...), read from local disk only.

    ``onegen.sources.open_source`` opens one; fields a kind does not use are ignored.
    """

    kind: Literal["image_folder", "hf_dataset", "sample_photos", "dl3dv", "objaverse", "co3d", "hypersim", "id_folder"]
    path: Path | None = Field(None, description="the source's folder; every kind but sample_photos needs one")
    split: str | None = None
    image_column: str = "image"
    limit: int | None = Field(None, ge=1, description="read at most this many records")
    # every kind; then the scene and identity readers' (dl3dv, objaverse, co3d, hypersim, id_folder) own
    resolution: int | None = Field(None, ge=8, multiple_of=8, description="square side images are centre-cropped/"
                                   "resized to; null: world.resolution for photo sources, 256 for the others")
    views: tuple[int, int] = Field((4, 12), description="min/max views per multiview record (paper: 4-12)")
    captions: Path | None = Field(None, description="csv 'id,caption' without header (Cap3D for objaverse; dl3dv)")
    image_subdir: str | None = Field(None, description="dl3dv: folder replacing file_path's first one, e.g. images_4")
    render_fov_deg: float = Field(49.1343, gt=0, lt=180,
                                  description="objaverse renders' field of view (35 mm lens, 32 mm sensor)")
    categories: list[str] | None = Field(None, description="co3d: categories to read; null = all")
    camera_parameters: Path | None = Field(
        None, description="hypersim: metadata_camera_parameters.csv (per-scene intrinsics); null = 60 deg pinhole")
    min_images: int = Field(4, ge=1, description="id_folder: keep subjects with at least this many images")
    id_views: tuple[int, int] = Field((2, 5), description="id_folder: min/max images per identity record (paper: 2-5)")

    @property
    def scene_side(self) -> int:
        """The side a scene or identity reader stores its views at."""
        return self.resolution or 256

    @model_validator(mode="after")
    def _ranges(self):
        if self.path is None and self.kind != "sample_photos":
            raise ValueError(f"path is required for a {self.kind} source")
        if not 1 <= self.views[0] <= self.views[1]:
            raise ValueError("views must be (min, max) with 1 <= min <= max")
        lo, hi = self.id_views
        if not (1 <= lo and hi >= 2 * lo - 1):
            raise ValueError("id_views must be (min, max) with 1 <= min and max >= 2*min - 1 "
                             "(so every subject splits into groups of min..max images)")
        if self.min_images < lo:
            raise ValueError("min_images must be >= id_views[0]")
        return self


class FamilyConfig(_Strict):
    enabled: bool = True
    sources: list[str] = Field(default_factory=lambda: ["world"], description="'world' or names under sources")
    max_samples: int | None = Field(None, ge=1, description="cap per family; null = everything the sources give")


def _default_families() -> dict[str, FamilyConfig]:
    # pose is left out, so off (``ShardsConfig._every_family_named``) unless asked for: the procedural world, every
    # other family's default source, has no people
    return {f: FamilyConfig() for f in FAMILIES if f != "pose"}


class ShardsConfig(_Strict):
    max_samples_per_shard: int = Field(64, ge=1, description="items per family shard, fixed up front (the "
                                                             "partition never depends on workers or bytes)")
    max_bytes_per_shard: int = Field(256 * 2**20, ge=1024, description="world stage only: cut its shards here")
    rays_normalize_cameras: bool = Field(False, description="optical axes meet at origin, first camera at 1.7")
    families: dict[Family, FamilyConfig] = Field(default_factory=_default_families)

    @model_validator(mode="after")
    def _every_family_named(self):
        # a family the params leave out is not built: a params file from before the family existed still runs
        for f in FAMILIES:
            self.families.setdefault(f, FamilyConfig(enabled=False, sources=[]))
        return self


# --- annotators (paper §4) ------------------------------------------------------------------
# Each model annotator loads from a local folder/file (never the hub). ``path: null`` means the
# annotator is off: the build uses exact ground truth where the source has it and the
# deterministic annotators (Canny, degradations) otherwise, and says which keys would enable more.
# Each class below is owned by its annotator module (onegen/annotators/<name>.py).

class CaptionerConfig(_Strict):
    """Any transformers image-text-to-text VLM (LLaVA-NeXT as the paper): long caption + entities in one pass."""

    path: ModelPath | None = Field(None, description="local VLM folder (LlavaNextForConditionalGeneration by default)")
    backend: Literal["transformers", "vllm", "sglang"] = Field(
        "transformers", description="vllm / sglang: serving engines, used only if their package is installed")
    batch_size: int = Field(
        40, ge=1, description="images per generate call; default 128 with quantize fp8 and kv_cache fp8 (anyres 672²: "
                                "61.1 GiB peak, 12.0 img/s on an H100), 96 with quantize fp8 alone (with prefill_mlp_rows "
                                "16: 66.6 GiB peak and 10.72 img/s on an H200), else 40 (bf16: 45 GiB on an 80 GB H100, "
                                "64 ran out of memory); set 256 for base tiles (61 GiB)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    attn_implementation: Literal["sdpa", "flash_attention_2"] = "sdpa"
    decode_attention: Literal["sdpa", "flex"] = Field(
        "sdpa", description="with sdpa: the compiled decode step's attention, packed-GQA SDPA or flex attention "
                            "(split-KV decoding kernel)")
    image_tokens: Literal["anyres", "base"] = Field(
        "anyres", description="base: the base-resolution tile only (LLaVA-NeXT: 577 image tokens instead of up to ~2.9k)")
    quantize: Literal["none", "fp8"] = Field(
        "none", description="fp8: W8A8 language-model linears (Ada/Hopper, bf16 model; numbers differ from bf16's; "
                            "vllm/sglang use their own online fp8)")
    prefill_mlp_rows: int | None = Field(
        None, ge=1, description="run each decoder MLP on at most this many images at a time in prefill (decode steps "
                                "run whole): its gate/up activations (~0.2 GB per anyres image) set the prefill's "
                                "peak; 16 leaves batch 96 room on an 80 GB H100 (128 with kv_cache fp8). None: the "
                                "whole batch at once (default 16 with quantize fp8)")
    static_cache: bool = Field(True, description="static KV cache (what lets the decode step be compiled)")
    kv_cache: Literal["model", "fp8"] = Field(
        "model", description="fp8: the static KV cache stored as float8 e4m3 with a scale per token and head, read by "
                             "a Triton decode kernel (half the decode steps' KV bytes; numbers differ from the "
                             "model dtype's); needs static_cache, sdpa and the transformers backend")
    compile: bool = Field(True, description="torch.compile: CUDA graphs for the decode step, fused prefill "
                                            "layers (CUDA, static cache)")
    decode_compile_mode: Literal["reduce-overhead", "max-autotune"] = Field(
        "reduce-overhead", description="torch.compile mode of the decode step (both replay CUDA graphs); "
                                       "max-autotune also times GEMM tiles for its small-batch shapes (longer compile)")
    length_bucketing: bool = Field(True, description="batch images with similar image-token counts together")
    max_new_tokens: int = Field(320, ge=1, description="room for a 150-word caption plus the entity line")
    min_words: int = Field(100, ge=1, description="paper §4: captions of 100-150 words")
    # above the paper's 150: real VLMs overshoot a little, and a rejected caption costs a whole retry
    max_words: int = Field(180, ge=1)
    max_entities: int = Field(10, ge=1, description="paper §4: at most 10 entities per image")
    retries: int = Field(1, ge=0, description="re-generations with seeded sampling for an invalid answer")
    retry_temperature: float = Field(0.7, gt=0)
    seed: int = Field(0, description="mixed with each image's content hash to seed its retries")
    instruction: str | None = Field(None, description="replaces the built-in CAPTION:/ENTITIES: instruction")

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")
        if self.kv_cache == "fp8" and not (self.static_cache and self.attn_implementation == "sdpa"
                                           and self.backend == "transformers"):
            raise ValueError("kv_cache: fp8 needs static_cache: true, attn_implementation: sdpa and "
                             "backend: transformers")
        return self

    @model_validator(mode="before")
    @classmethod
    def _batch_for_dtype(cls, data):
        # FP8 halves the weights and the prefill's activations: room for more decode rows per step, and with the
        # prefill MLPs on 16 images at a time for 96 of them (decode 33.3 ms per image at 96; 37.0 at 64, another run).
        # The FP8 KV cache halves the cache too: 128 rows fit (decode 24.5 ms per image, against 26.2 at 96).
        if isinstance(data, dict) and data.get("quantize") == "fp8":
            batch = 128 if data.get("kv_cache") == "fp8" else 96
            data = {"batch_size": batch, "prefill_mlp_rows": 16, **data}  # an explicit null still means whole batches
        elif isinstance(data, dict) and "batch_size" not in data:
            data = {**data, "batch_size": cls.model_fields["batch_size"].default}
        return data


class SegmenterConfig(_Strict):
    """Entities -> boxes (open-vocabulary detector) -> masks (segment-anything, box prompts)."""

    detector: Literal["grounding_dino", "owlv2"] = "grounding_dino"
    detector_path: ModelPath | None = Field(None, description="local transformers detector folder")
    sam_path: ModelPath | None = Field(None, description="segment-anything checkpoint (.pth)")
    sam_model: Literal["vit_b", "vit_l", "vit_h"] = Field("vit_h", description="registry type of sam_path")
    batch_size: int = Field(8, ge=1)
    box_threshold: float = Field(0.35, ge=0, le=1, description="Grounding DINO: a query's best token prob must exceed")
    text_threshold: float = Field(0.25, ge=0, le=1, description="Grounding DINO: its entity's best token prob must exceed")
    score_threshold: float = Field(0.1, ge=0, le=1, description="OWLv2: a box's best query prob must exceed")
    nms_iou: float = Field(0.5, gt=0, le=1, description="per-entity NMS IoU; 1 keeps every box")
    max_entities: int = Field(10, ge=1, le=10, description="entity names per image (paper: at most 10)")
    max_instances: int = Field(32, ge=1, description="highest-scoring boxes kept per image")
    amp: Literal["off", "bf16", "fp16"] = Field("bf16", description="CUDA autocast of the detector and SAM")


class DepthAnnotatorConfig(_Strict):
    """Depth-Anything-V2 (DepthAnythingForDepthEstimation): relative depth, stored 16-bit."""

    path: ModelPath | None = Field(None, description="local Depth-Anything-V2 folder")
    batch_size: int = Field(16, ge=1)
    input_size: int = Field(518, ge=14, description="side the DA-V2 processor resizes towards (then a multiple of 14)")
    amp: Literal["off", "bf16", "fp16"] = Field("bf16", description="CUDA autocast of the DINOv2 backbone; the DPT head stays float32")


class PoseAnnotatorConfig(_Strict):
    """ultralytics YOLO person boxes -> ViTPose COCO keypoints -> OpenPose-style skeleton."""

    detector_path: ModelPath | None = Field(None, description="ultralytics YOLO weights (.pt)")
    path: ModelPath | None = Field(None, description="local ViTPose folder (VitPoseForPoseEstimation)")
    batch_size: int = Field(16, ge=1, description="images per detector batch; person crops per ViTPose batch is 4x")
    detector_size: int = Field(640, ge=32, multiple_of=32, description="square letterbox side of the detector input")
    person_class: int = Field(0, ge=0, description="detector class index of 'person' (COCO: 0)")
    box_threshold: float = Field(0.25, ge=0, le=1, description="person confidence (ultralytics predict default)")
    nms_iou: float = Field(0.7, ge=0, le=1, description="NMS IoU (ultralytics predict default)")
    max_persons: int = Field(20, ge=1, description="most confident persons kept per image")
    box_padding: float = Field(1.25, ge=1, description="person box enlargement before the ViTPose crop (ViTPose: 1.25)")
    keypoint_threshold: float = Field(0.3, description="joints scoring below this are not drawn")
    amp: Literal["off", "bf16", "fp16"] = Field("fp16", description="CUDA autocast of both networks (fp16 as ultralytics: bf16 coarsens box corners and heatmap peaks)")


class EdgesConfig(_Strict):
    """Canny is always on (OpenCV); HED needs a checkpoint."""

    hed_path: ModelPath | None = Field(None, description="HED checkpoint (optional)")
    canny_low: tuple[int, int] = Field((50, 150), description="range of the seeded lower Canny threshold")
    canny_high: tuple[int, int] = Field((150, 250), description="range of the seeded upper Canny threshold")
    hed_size: int = Field(512, ge=16, description="short side HED runs at (ControlNet's detect resolution)")
    batch_size: int = Field(8, ge=1)
    amp: Literal["off", "bf16", "fp16"] = Field("bf16", description="CUDA autocast of the HED network")

    @model_validator(mode="after")
    def _canny_ranges(self):
        lo, hi = self.canny_low, self.canny_high
        if not (0 <= lo[0] <= lo[1] and 0 <= hi[0] <= hi[1] and lo[1] <= hi[0]):
            raise ValueError("canny_low/canny_high must be ordered ranges with canny_low below canny_high")
        return self


# open_clip builds either architecture from one ViT-L/14 weights file without complaint: a file names its own
CLIP_ARCHITECTURES = "'ViT-L-14' for LAION's weights, 'ViT-L-14-quickgelu' for OpenAI's"


class FiltersConfig(_Strict):
    """CLIP (open_clip) NSFW / quality filters for the ID and text-to-image sources."""

    clip_path: ModelPath | None = Field(None, description="open_clip checkpoint file")
    clip_model: str | None = Field(None, description=f"open_clip architecture of the checkpoint, required with it: "
                                   f"{CLIP_ARCHITECTURES}")
    nsfw_threshold: float = Field(0.5, ge=0, le=1, description="drop at or above this zero-shot NSFW probability")
    min_quality: float = Field(0.3, ge=0, le=1, description="drop below this zero-shot quality probability")
    batch_size: int = Field(64, ge=1)
    amp: Literal["off", "bf16", "fp16"] = Field("bf16", description="CUDA autocast of the image tower")

    @model_validator(mode="after")
    def _architecture_named(self):
        if self.clip_path is not None and self.clip_model is None:
            raise ValueError(f"clip_model: name the open_clip architecture of clip_path ({CLIP_ARCHITECTURES})")
        return self


class AnnotatorsConfig(_Strict):
    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N'")
    captioner: CaptionerConfig = CaptionerConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    depth: DepthAnnotatorConfig = DepthAnnotatorConfig()
    pose: PoseAnnotatorConfig = PoseAnnotatorConfig()
    edges: EdgesConfig = EdgesConfig()
    filters: FiltersConfig = FiltersConfig()


class ActorPoolConfig(_Strict):
    """One model annotator's Ray actor pool: replicas of the model, and what each one holds."""

    concurrency: int = Field(1, ge=1, description="actors (model replicas) in the pool")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (0 = CPU; 1 on a GPU node; 0.5 = two per GPU)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor")


class BuildConfig(_Strict):
    """How shards are built: a Ray Data pipeline (local in-process Ray by default, or a cluster).

    The unit of work is one planned shard (``shards.max_samples_per_shard`` items): read and
    write are Ray tasks, each model annotator an actor pool that takes whole shards and batches
    them by its own ``annotators.<name>.batch_size``. Output bytes never depend on these knobs.
    """

    ray_address: str | None = Field(None, description="null = start Ray in-process; 'auto' or ray://host:port = attach")
    max_failure_fraction: float = Field(0.01, ge=0, le=1, description="end non-zero above this fraction of failed items")
    executor: Literal["ray", "local"] = Field("ray", description="'local' = one process, shard after shard, no Ray "
                                                                      "(the world still renders in cpu_workers processes)")
    cpu_workers: int = Field(2, ge=1, description="concurrent read / build-and-write tasks (one shard each); "
                                                  "also the procedural world's render processes")
    num_cpus: int = Field(2, ge=1, description="CPUs of the in-process Ray (ignored when attaching)")
    object_store_mb: int = Field(512, ge=100, description="object store of the in-process Ray, MiB")
    annotator_pools: dict[Literal["filters", "captioner", "segmenter", "depth", "hed", "pose"], ActorPoolConfig] = Field(
        default_factory=dict, description="per model annotator; unlisted ones get one CPU actor")


class LatentsConfig(_Strict):
    """``onegen latents <family>``: VAE latents (and text features) precomputed into shards."""

    text: bool = Field(True, description="also cache each prompt's text-encoder features")
    batch_size: int = Field(32, ge=1, description="samples per encoding chunk")


class ReaderConfig(_Strict):
    batch_size: int = Field(8, ge=1)
    shuffle_buffer: int = Field(256, ge=0)
    num_workers: int = Field(0, ge=0)


class WorldEvalConfig(_Strict):
    """Procedural-world editions of the benchmarks: held-out scenes (their own seed stream)."""

    items: int = Field(24, ge=1)
    resolution: int = Field(128, ge=16, multiple_of=8)
    nvs_views: int = Field(8, ge=2, description="orbit views per scene; view 0 conditions, the rest are targets")
    pose_views: int = Field(4, ge=2)
    conditions: list[Literal["canny", "depth_edges"]] = Field(
        ["canny", "depth_edges"], min_length=1,
        description="world_conditions' annotator-free conditions (depth by Depth-Anything joins when "
                    "annotators.depth.path is set): canny->image, and depth->image scored by Canny")
    seed: int = 1000


class NYUv2Config(_Strict):
    path: Path | None = Field(None, description="nyu_depth_v2_labeled.mat, or Marigold's extracted folder/tar")
    layout: Literal["mat", "marigold"] = "mat"


class DIODEConfig(_Strict):
    path: Path | None = Field(None, description="DIODE root holding val/{indoors,outdoor}")
    subset: Literal["all", "indoors", "outdoor"] = "all"


class GSOConfig(_Strict):
    path: Path | None = Field(None, description="folder of GSO objects, 25 views each")
    condition_views: Literal[1, 2, 3] = 1
    known_poses: bool = Field(True, description="give the predictor the condition views' cameras (paper Table 2)")


class WorldGenEvalConfig(_Strict):
    """GenEval on the procedural world: prompts from the world's grammar, a YOLO detector trained on renders."""

    prompts: int = Field(48, ge=1, description="prompts, cycling through GenEval's six tags")
    train_images: int = Field(320, ge=1, description="detector training renders (world.resolution)")
    val_images: int = Field(128, ge=1, description="held-out renders: the detector's mAP50 and score calibration")
    negatives_fraction: float = Field(0.25, ge=0, le=1, description="object-free images (noise, shuffled "
                                      "patches) added per render, so garbage is not judged to hold shapes")
    epochs: int = Field(20, ge=1)
    imgsz: int = Field(128, ge=32, multiple_of=32, description="detector input size")
    batch: int = Field(8, ge=1)
    seed: int = 2000


class GenEvalConfig(_Strict):
    """GenEval (paper Table 1): the 553 shipped prompts, 4 images each, detector + CLIP colour."""

    detector_path: ModelPath | None = Field(None, description="ultralytics YOLO segmentation weights (COCO classes)")
    clip_path: ModelPath | None = Field(None, description="open_clip state dict of OpenAI's ViT-L-14 for the colour classifier")
    clip_model: str = Field("ViT-L-14-quickgelu", description="open_clip architecture of clip_path (OpenAI weights use QuickGELU)")
    image_size: int = Field(1024, ge=64, multiple_of=8, description="generated image size (paper Table 1: 1024)")
    images_per_prompt: int = Field(4, ge=1)
    world: WorldGenEvalConfig = WorldGenEvalConfig()


class IdentityConfig(_Strict):
    """Unsplash-50 ID (paper Table 3): reference faces and prompts from a local folder."""

    path: Path | None = Field(None, description="folder of reference faces + prompts (layout: evals/identity/datasets.py)")
    arcface_path: ModelPath | None = Field(None, description="ArcFace embedding model (.onnx)")
    arcface_mean: float | None = Field(None, description="ArcFace input normalisation (x - mean) / std; unset: as "
                                      "insightface decides, 127.5 and 127.5, or 0 and 1 for a model that normalises "
                                      "in its graph (mxnet exports)")
    arcface_std: float | None = Field(None, gt=0)
    clip_path: ModelPath | None = Field(None, description="open_clip checkpoint for CLIP-T: a weights file, or a folder "
                                                     "with open_clip_config.json (Hub layout)")
    clip_model: str | None = Field(None, description=f"open_clip architecture of a clip_path weights file, required "
                                   f"with one: {CLIP_ARCHITECTURES} (a Hub-layout folder names its own)")
    resolution: int = Field(512, ge=16, multiple_of=8, description="side of generated images (paper: 512 for 2-3 views)")

    @model_validator(mode="after")
    def _normalisation_whole(self):
        if (self.arcface_mean is None) != (self.arcface_std is None):
            raise ValueError("set arcface_mean and arcface_std together, or neither (then the model's graph decides)")
        return self


class ConditionConfig(_Strict):
    """UniCon condition metrics: FID and condition fidelity by re-annotating generated images."""

    inception_path: ModelPath | None = Field(None, description="FID Inception weights (torch-fidelity's pt_inception-"
                                                          "2015-12-05 state dict): required by unicon_conditions, "
                                                          "optional in world_conditions")
    path: Path | None = Field(None, description="real images for unicon_conditions: image folder with metadata.jsonl "
                                                "(file_name, text), layout in evals/condition/datasets.py")
    condition: Literal["depth", "softedge", "pose", "canny"] = Field(
        "depth", description="unicon_conditions setting: which condition is annotated, given and re-annotated")
    resolution: int = Field(512, ge=16, multiple_of=8, description="side real images are cropped and resized to (UniCon: 512)")


class EvalsConfig(_Strict):
    benchmarks: list[str] = Field(default_factory=lambda: ["world_depth", "world_nvs", "world_pose", "world_id",
                                                          "world_conditions", "world_geneval"],
                                  description="what `dvc repro` evaluates")
    predictor: str = Field("baseline", description="'baseline' (each benchmark's reference), 'folder:<path>' "
                                                   "or 'model:<checkpoint>'")
    sampling_steps: int = Field(100, ge=1, description="Euler steps of the model predictor (paper: 100)")
    cfg_scale: float = Field(5.0, ge=1.0, description="classifier-free guidance of the model predictor (paper: 5)")
    batch_size: int = Field(8, ge=1)
    precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="the model predictor's transformer on a GPU: bf16 autocast, as the released pipeline "
                            "runs it, or fp32 (exact, several times slower at 1024²); on a CPU always fp32")
    lpips_weights: ModelPath | None = Field(None, description="local LPIPS(alex) state dict; unset = no LPIPS")
    world: WorldEvalConfig = WorldEvalConfig()
    nyuv2: NYUv2Config = NYUv2Config()
    diode: DIODEConfig = DIODEConfig()
    gso: GSOConfig = GSOConfig()
    geneval: GenEvalConfig = GenEvalConfig()
    identity: IdentityConfig = IdentityConfig()
    condition: ConditionConfig = ConditionConfig()


class ModelConfig(_Strict):
    """OneDiffusion's parts, each from a local folder (never the hub); null = tiny seeded-random
    stand-ins for tests and the offline CPU default, whose outputs are never a result."""

    size: Literal["tiny", "small", "onediffusion-2.8b", "lumina2-2.6b"] = "tiny"
    vae: ModelPath | None = Field(None, description="AutoencoderKL folder (or a Hub-layout repo with vae/)")
    text_encoder: ModelPath | None = Field(None, description="T5 encoder folder (or a repo with text_encoder/ + tokenizer/)")
    checkpoint: ModelPath | None = Field(None, description="released transformer/ folder to start from")
    max_text_tokens: int = Field(300, ge=1)

    @property
    def vae_shift(self) -> bool:
        """Whether latents subtract the VAE config's shift_factor (SD3's convention): not when training starts from
        the released weights, whose pipeline never applied it (model/vae.py)."""
        return self.checkpoint is None


# --- training recipe (paper §3.3) ---------------------------------------------------------
# The paper trains in three stages -- text-to-image pretraining, a mixture of every task, a
# high-resolution finetune -- with AdamW at lr 5e-4, a global batch of 256, the SD3 noise
# schedule shifted by 3, and task groups drawn with equal probability (the reader does that).
# A stage names the shard families it reads and, optionally, the side they are trained at (the paper's stages
# change resolution: T2I 256² then 512², 256² for the other tasks, a 1024² finetune); by default the side
# the shards were built at.
# Choices the paper leaves open: betas (0.9, 0.95) because lr 5e-4 is 5x DiT's and a shorter
# second-moment memory avoids loss spikes there; no weight decay, as DiT and Lumina train;
# linear warm-up then constant lr; EMA 0.999 with the usual warm-up min(d, (1+n)/(10+n)).

# A side must give whole 2x2 patches of the VAE's /8 latents.
Side = Annotated[int, Field(ge=16, multiple_of=16)]


@dataclass(frozen=True)
class ViewSides:
    """A family's side by how many views a sample holds (the paper's ID finetune: 512² for 2-3 views, 256² for
    4-5): ``(n, side)`` pairs, ``n`` ascending, and the side of samples with more views than every ``n``
    (``beyond``, None: as stored). ``onegen.shards.resize.side_by_views`` applies it."""

    by_views: tuple[tuple[int, int], ...]
    beyond: int | None = None

    @property
    def label(self) -> str:
        """``512to3v_256to5v`` (``_else<S>`` with a ``beyond``): the rule in a folder name and a checkpoint's recipe."""
        return "_".join([f"{side}to{n}v" for n, side in self.by_views] + ([f"else{self.beyond}"] if self.beyond else []))

    def __str__(self) -> str:
        steps = ", ".join(f"{side}px up to {n} views" for n, side in self.by_views)
        return f"{steps}, else {f'{self.beyond}px' if self.beyond else 'as stored'}"


# what a stage trains a family at: a side, sides by view count, or None (as its shards were built)
SideRule = int | ViewSides | None
# family_resolution's values, told apart by form so that a bad one gets only its own form's error
FamilySide = Annotated[Annotated[Side, Tag("side")] | Annotated[dict[Annotated[int, Field(ge=1)], Side], Tag("by_views")],
                       Discriminator(lambda v: "by_views" if isinstance(v, dict) else "side")]


class TrainStage(_Strict):
    """One block of the recipe: which shard families, at what resolution, how many optimizer steps, what batch."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    families: list[Family] = Field(..., min_length=1, description="shard families under <paths.data>/shards")
    steps: int = Field(..., ge=0, description="optimizer steps in this stage")
    batch_size: int = Field(..., ge=1, description="global batch (all ranks x grad_accum)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="P(prompt -> '') for classifier-free guidance")
    resolution: Side | None = Field(None, description="square side every view of this stage is trained at: images "
                                    "centre-cropped and resized, ray maps recomputed from the cameras; null = as built")
    family_resolution: dict[Family, FamilySide] = Field(
        default_factory=dict, description="sides for some families over `resolution` (paper's mixed stage: "
                                          "text2image 512, the other tasks 256); or sides by view count (ray maps "
                                          "not counted), {3: 512, 5: 256}: samples of up to 3 views at 512, up to 5 "
                                          "at 256, more at `resolution` (as stored where null) (paper's ID finetune)")

    @model_validator(mode="after")
    def _resolution_families(self):
        extra = sorted(set(self.family_resolution) - set(self.families))
        if extra:
            raise ValueError(f"family_resolution names {extra}, not among this stage's families {self.families}")
        empty = sorted(f for f, rule in self.family_resolution.items() if rule == {})
        if empty:
            raise ValueError(f"family_resolution gives {empty} sides by view count without any view count")
        return self

    def side_of(self, family: str) -> SideRule:
        """What ``family`` is trained at in this stage: a square side, sides by view count, or None (as its shards
        were built)."""
        rule = self.family_resolution.get(family, self.resolution)
        if isinstance(rule, dict):
            return ViewSides(tuple(sorted(rule.items())), beyond=self.resolution)
        return rule


def _default_stages() -> list[TrainStage]:
    return [
        TrainStage(name="t2i", families=["text2image"], steps=150, batch_size=8, caption_dropout=0.1),
        # every family the procedural world fills (pose needs photos of people and its annotator)
        TrainStage(name="mixed", families=[f for f in FAMILIES if f != "pose"], steps=300, batch_size=8,
                   caption_dropout=0.1),
        TrainStage(name="finetune", families=["text2image", "id"], steps=50, batch_size=8, caption_dropout=0.1),
    ]


class TrainConfig(_Strict):
    stages: list[TrainStage] = Field(default_factory=_default_stages, min_length=1)
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate (paper: 5e-4)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0, description="linear lr warm-up, then constant")
    grad_clip: float = Field(1.0, gt=0, description="max global grad norm")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    sigma_shift: float = Field(3.0, gt=0, description="SD3 shift of the logit-normal sigma (paper: 3)")
    condition_prob: float = Field(0.0, ge=0, le=1, description="share of samples of 2+ views trained as the sampler's "
                                  "conditional mode: a random subset of views given clean (sigma 0, no loss); "
                                  "not in the paper, whose per-view sigma alone almost never reaches 0")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast / FSDP2 mixed precision on CUDA; CPU runs fp32")
    parallel: Literal["none", "ddp", "fsdp2"] = Field("ddp", description="how several ranks share the model")
    activation_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile each transformer block")
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile mode of the blocks; reduce-overhead replays each block's kernels as CUDA "
                               "graphs, for host-bound steps (small models, few tokens: 2.44x steps/s on the learning "
                               "run's text2image step, benchmarks/bench_step_overhead.py); one process, no "
                               "activation checkpointing, no gradient accumulation")
    master_weights: StrictBool | Literal["auto"] = Field(
        "auto", description="keep the linear layers' weights in the compute dtype (bf16 on CUDA) and their fp32 "
                            "masters in the optimizer (model/master_adamw.py), as autocast would round them but "
                            "without its per-step weight and gradient casts; one process or DDP (summing the gradients "
                            "in fp32), grad_accum 1, not under FSDP2 (which keeps its own); checkpoints hold the "
                            "masters; auto: on in bf16 on CUDA where it runs, and a resumed run as its checkpoint was "
                            "trained (model/train.py's uses_master_weights)")
    attention: Literal["auto", "cudnn", "flex"] = Field(
        "auto", description="the soft-capped self-attention kernel on CUDA: cudnn (cuDNN's fused kernel with the cap "
                            "as a score modifier; needs nvidia-cudnn-frontend, which the Makefile installs), flex "
                            "(compiled flex_attention; its Triton kernels round the head dim up to a power of two), "
                            "auto (cudnn in bf16 where installed and the head dim fits it, else flex)")
    latents: bool = Field(False, description="read data/latents/<family> (precomputed by `onegen latents`) "
                                             "instead of encoding images every step")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints; also the data-stream segment")
    keep_checkpoints: int = Field(3, ge=1, description="newest step_* dirs kept")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    out_dir: Path = Path("checkpoints")

    @model_validator(mode="after")
    def _cuda_graphs(self):
        if self.compile_mode != "reduce-overhead":
            return self
        if not self.compile or self.activation_checkpointing:
            # checkpointing re-runs a block's forward inside backward, which a replayed graph's buffers cannot serve
            raise ValueError("compile_mode reduce-overhead needs compile: true and activation_checkpointing: false")
        if self.grad_accum > 1:
            # a micro-step's gradients may live in the graphs' memory that the next micro-step replays over;
            # measured with one micro-step a step only (benchmarks/bench_step_overhead.py)
            raise ValueError("compile_mode reduce-overhead runs one micro-step a step (grad_accum: 1) until "
                             "accumulation under CUDA graphs is checked")
        return self

    @model_validator(mode="after")
    def _master_weights(self):
        if self.master_weights is True and self.parallel == "fsdp2":  # auto turns off there (uses_master_weights)
            raise ValueError("master_weights does not run under parallel fsdp2, which keeps its own fp32 parameters")
        if self.master_weights is True and self.grad_accum > 1:
            # the micro-steps' bf16 gradients would be summed in bf16, where autocast sums them in fp32
            raise ValueError("master_weights needs grad_accum 1: its gradients would accumulate in bf16")
        return self

    @model_validator(mode="after")
    def _unique_stage_names(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def sides_of(self, family: str) -> list[SideRule]:
        """The sides (or sides by view count) stages with steps train ``family`` at (None: as its shards are), what
        `onegen latents` encodes; a family no stage trains is encoded as its shards are."""
        sides = {s.side_of(family) for s in self.stages if s.steps and family in s.families}
        order = {type(None): 0, int: 1, ViewSides: 2}
        return sorted(sides, key=lambda side: (order[type(side)], side if isinstance(side, int) else 0,
                                               getattr(side, "label", ""))) or [None]



class Params(_Strict):
    profile: str = "default"
    seed: int = 0
    paths: PathsConfig = PathsConfig()
    world: WorldConfig = WorldConfig()
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    shards: ShardsConfig = ShardsConfig()
    annotators: AnnotatorsConfig = AnnotatorsConfig()
    build: BuildConfig = BuildConfig()
    reader: ReaderConfig = ReaderConfig()
    latents: LatentsConfig = LatentsConfig()
    evals: EvalsConfig = EvalsConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _sources_exist(self):
        # What each family can make of a source kind's records: photos and scene views become
        # per-image samples (ground truth where the record has it, model annotators otherwise);
        # only scenes with cameras make multiview samples, only subjects make identity samples.
        scenes = {"dl3dv", "objaverse", "co3d", "hypersim"}
        accepts = {"multiview": scenes, "id": {"id_folder"}}
        per_image = {"image_folder", "hf_dataset", "sample_photos"} | scenes
        for fam, fc in self.shards.families.items():
            for s in fc.sources:
                if s == "world" and fam == "pose" and fc.enabled:
                    raise ValueError("shards.families.pose.sources: the procedural world has no people to pose; "
                                     "pose takes photo and scene sources")
                if s == "world":
                    continue
                if s not in self.sources:
                    raise ValueError(f"shards.families.{fam}.sources names unknown source {s!r}")
                kind = self.sources[s].kind
                if kind not in accepts.get(fam, per_image):
                    raise ValueError(f"shards.families.{fam}.sources: a {kind} source ({s!r}) gives no {fam} "
                                     f"samples; it takes {', '.join(sorted(accepts.get(fam, per_image)))}")
        return self


def _format_error(where: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: {path}: unknown key")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")  # a validator's own message says it all
            lines.append(f"{where}: {path}: {msg}" + ("" if e["type"] == "value_error" else got_s))
    return "; ".join(lines)


def parse_params(data: object, where: str = "params") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(where, e)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    return parse_params(data, str(path))


def profile_path(name: str) -> Path:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(known)}")
    return path


def load_profile(name: str) -> Params:
    return load_params(profile_path(name))
