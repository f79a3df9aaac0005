"""``ultralytics``, imported the way this project runs it: offline and without side effects.

Importing ultralytics has process-wide effects we undo or pin here, once, for every user (the
pose annotator, the GenEval detectors, the benchmarks):

* it replaces ``PIL.Image.open`` with a wrapper that, on a file Pillow cannot identify, tries to
  load the optional ``pi_heif`` plugin and raises ModuleNotFoundError -- every corrupt image in
  the process would stop naming itself, so the original ``Image.open`` is put back;
* it would reach the network (hub, auto-installs, fonts) unless told not to (SPEC pitfalls), and
  keeps its settings in the user's home unless pointed at the project's cache;
* it pins the whole process to ``cpu_count - 1`` torch threads when it picks a CPU device;
* it attaches experiment-tracker callbacks (Ray Tune among them) when those packages exist.

Checkpoints load with ``weights_only`` (``ULTRALYTICS_SAFE_LOAD``); note that ultralytics then
adds its model classes to torch's safe globals for the rest of the process.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def import_ultralytics():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(PROJECT_ROOT / ".cache" / "ultralytics"))
    import torch

    pil_open = Image.open
    import ultralytics
    import ultralytics.utils.patches  # noqa: F401 -- the module that patches Image.open, imported before undoing it
    import ultralytics.utils.torch_utils
    from ultralytics.utils import SETTINGS

    if getattr(pil_open, "__module__", "").startswith("ultralytics"):  # imported before us: find Pillow's own
        pil_open = ultralytics.utils.patches._image_open
    Image.open = pil_open
    ultralytics.utils.torch_utils.NUM_THREADS = torch.get_num_threads()
    quiet = {k: False for k in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")}
    if any(SETTINGS.get(k) != v for k, v in quiet.items()):
        SETTINGS.update(quiet)
    return ultralytics
