"""One typed schema for ``params.yaml``, validated at load.

Unknown keys and mistyped values fail with their dotted path and the expected type, so a
typo never silently falls back to a default. Named profiles live in ``onegen/profiles/``;
``params.yaml`` as committed is the ``default`` profile, and ``onegen params --profile paper``
writes another one in its place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
FAMILIES = ("text2image", "depth", "semantic", "bbox", "multiview", "id", "edges")
Family = Literal["text2image", "depth", "semantic", "bbox", "multiview", "id", "edges"]


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
    records_per_shard: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must be <= max_objects")
        if not 1 <= self.id_views[0] <= self.id_views[1]:
            raise ValueError("id_views must be (min, max) with 1 <= min <= max")
        return self


class SourceConfig(_Strict):
    """An external image source (T2I photos, ID folders, ...), read from local disk only."""

    kind: Literal["image_folder", "hf_dataset"]
    path: Path
    split: str | None = None
    image_column: str = "image"
    limit: int | None = Field(None, ge=1, description="read at most this many records")


class FamilyConfig(_Strict):
    enabled: bool = True
    sources: list[str] = Field(default_factory=lambda: ["world"], description="'world' or names under sources")
    max_samples: int | None = Field(None, ge=1, description="cap per family; null = everything the sources give")


class ShardsConfig(_Strict):
    max_samples_per_shard: int = Field(64, ge=1)
    max_bytes_per_shard: int = Field(256 * 2**20, ge=1024)
    rays_normalize_cameras: bool = Field(False, description="optical axes meet at origin, first camera at 1.7")
    families: dict[Family, FamilyConfig] = Field(default_factory=lambda: {f: FamilyConfig() for f in FAMILIES})


# --- annotators (paper §4) ------------------------------------------------------------------
# Each model annotator loads from a local folder/file (never the hub). ``path: null`` means the
# annotator is off: the build uses exact ground truth where the source has it and the
# deterministic annotators (Canny, degradations) otherwise, and says which keys would enable more.
# Each class below is owned by its annotator module (onegen/annotators/<name>.py).

class CaptionerConfig(_Strict):
    """Any transformers image-text-to-text VLM (LLaVA-NeXT as the paper): long caption + entities."""

    path: Path | None = Field(None, description="local VLM folder (LlavaNextForConditionalGeneration by default)")
    batch_size: int = Field(16, ge=1)


class SegmenterConfig(_Strict):
    """Entities -> boxes (open-vocabulary detector) -> masks (segment-anything, box prompts)."""

    detector: Literal["grounding_dino", "owlv2"] = "grounding_dino"
    detector_path: Path | None = Field(None, description="local transformers detector folder")
    sam_path: Path | None = Field(None, description="segment-anything checkpoint (.pth)")
    batch_size: int = Field(8, ge=1)


class DepthAnnotatorConfig(_Strict):
    """Depth-Anything-V2 (DepthAnythingForDepthEstimation): relative depth, stored 16-bit."""

    path: Path | None = Field(None, description="local Depth-Anything-V2 folder")
    batch_size: int = Field(16, ge=1)


class PoseAnnotatorConfig(_Strict):
    """ultralytics YOLO person boxes -> ViTPose COCO keypoints -> OpenPose-style skeleton."""

    detector_path: Path | None = Field(None, description="ultralytics YOLO weights (.pt)")
    path: Path | None = Field(None, description="local ViTPose folder (VitPoseForPoseEstimation)")
    batch_size: int = Field(16, ge=1)


class EdgesConfig(_Strict):
    """Canny is always on (OpenCV); HED needs a checkpoint."""

    hed_path: Path | None = Field(None, description="HED checkpoint (optional)")


class FiltersConfig(_Strict):
    """CLIP (open_clip) NSFW / quality filters for the ID and text-to-image sources."""

    clip_path: Path | None = Field(None, description="open_clip checkpoint file")


class AnnotatorsConfig(_Strict):
    device: str = Field("auto", description="'auto' (cuda if present), 'cpu', 'cuda', 'cuda:N'")
    captioner: CaptionerConfig = CaptionerConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    depth: DepthAnnotatorConfig = DepthAnnotatorConfig()
    pose: PoseAnnotatorConfig = PoseAnnotatorConfig()
    edges: EdgesConfig = EdgesConfig()
    filters: FiltersConfig = FiltersConfig()


class BuildConfig(_Strict):
    """How shards are built: a Ray Data pipeline (local in-process Ray by default, or a cluster)."""

    ray_address: str | None = Field(None, description="null = start Ray in-process; 'auto' or ray://host:port = attach")
    max_failure_fraction: float = Field(0.01, ge=0, le=1, description="end non-zero above this fraction of failed items")


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


class GenEvalConfig(_Strict):
    """GenEval (paper Table 1): the 553 shipped prompts, 4 images each, detector + CLIP colour."""

    images: Path | None = Field(None, description="generated images in GenEval's folder layout (or generate with the model)")
    detector_path: Path | None = Field(None, description="ultralytics YOLO segmentation weights (COCO classes)")
    clip_path: Path | None = Field(None, description="open_clip ViT-L-14 checkpoint for the colour classifier")
    images_per_prompt: int = Field(4, ge=1)


class IdentityConfig(_Strict):
    """Unsplash-50 ID (paper Table 3): reference faces and prompts from a local folder."""

    path: Path | None = Field(None, description="folder of reference faces + prompts")
    arcface_path: Path | None = Field(None, description="ArcFace embedding model (.onnx)")
    clip_path: Path | None = Field(None, description="open_clip checkpoint for CLIP-T")


class ConditionConfig(_Strict):
    """UniCon condition metrics: FID and condition fidelity by re-annotating generated images."""

    inception_path: Path | None = Field(None, description="FID Inception weights (torch-fidelity format)")


class EvalsConfig(_Strict):
    benchmarks: list[str] = Field(default_factory=lambda: ["world_depth", "world_nvs", "world_pose"],
                                  description="what `dvc repro` evaluates")
    predictor: str = Field("baseline", description="'baseline' (each benchmark's reference), 'folder:<path>' "
                                                   "or 'model:<checkpoint>'")
    sampling_steps: int = Field(100, ge=1, description="Euler steps of the model predictor (paper: 100)")
    cfg_scale: float = Field(5.0, ge=1.0, description="classifier-free guidance of the model predictor (paper: 5)")
    batch_size: int = Field(8, ge=1)
    lpips_weights: Path | None = Field(None, description="local LPIPS(alex) state dict; unset = no LPIPS")
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
    vae: Path | None = Field(None, description="AutoencoderKL folder (or a Hub-layout repo with vae/)")
    text_encoder: Path | None = Field(None, description="T5 encoder folder (or a repo with text_encoder/ + tokenizer/)")
    checkpoint: Path | None = Field(None, description="released transformer/ folder to start from")
    max_text_tokens: int = Field(300, ge=1)


# --- training recipe (paper §3.3) ---------------------------------------------------------
# The paper trains in three stages -- text-to-image pretraining, a mixture of every task, a
# high-resolution finetune -- with AdamW at lr 5e-4, a global batch of 256, the SD3 noise
# schedule shifted by 3, and task groups drawn with equal probability (the reader does that).
# A stage names the shard families it reads; its resolution is the one its shards were built at.
# Choices the paper leaves open: betas (0.9, 0.95) because lr 5e-4 is 5x DiT's and a shorter
# second-moment memory avoids loss spikes there; no weight decay, as DiT and Lumina train;
# linear warm-up then constant lr; EMA 0.999 with the usual warm-up min(d, (1+n)/(10+n)).

class TrainStage(_Strict):
    """One block of the recipe: which shard families, how many optimizer steps, what batch."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    families: list[Family] = Field(..., min_length=1, description="shard families under <paths.data>/shards")
    steps: int = Field(..., ge=0, description="optimizer steps in this stage")
    batch_size: int = Field(..., ge=1, description="global batch (all ranks x grad_accum)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="P(prompt -> '') for classifier-free guidance")


def _default_stages() -> list[TrainStage]:
    return [
        TrainStage(name="t2i", families=["text2image"], steps=150, batch_size=8, caption_dropout=0.1),
        TrainStage(name="mixed", families=list(FAMILIES), steps=300, batch_size=8, caption_dropout=0.1),
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
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast / FSDP2 mixed precision on CUDA; CPU runs fp32")
    parallel: Literal["none", "ddp", "fsdp2"] = Field("ddp", description="how several ranks share the model")
    activation_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile each transformer block")
    latents: bool = Field(False, description="read data/latents/<family> (precomputed by `onegen latents`) "
                                             "instead of encoding images every step")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints; also the data-stream segment")
    keep_checkpoints: int = Field(3, ge=1, description="newest step_* dirs kept")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    out_dir: Path = Path("checkpoints")

    @model_validator(mode="after")
    def _unique_stage_names(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)



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
        for fam, fc in self.shards.families.items():
            for s in fc.sources:
                if s != "world" and s not in self.sources:
                    raise ValueError(f"shards.families.{fam}.sources names unknown source {s!r}")
                if s != "world" and fam != "text2image":
                    # photos need the model annotators (depth, SAM, ...) to become these tasks
                    raise ValueError(f"shards.families.{fam}.sources: only text2image reads external sources yet")
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
            lines.append(f"{where}: {path}: {e['msg']}{got_s}")
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
