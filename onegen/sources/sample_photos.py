"""A handful of real photographs that ship inside scikit-image, with human-written captions.

The default build uses them so that ``dvc repro`` takes photos through the annotator path
offline: the files come from the installed ``skimage/data`` folder (never the network; a
missing one is an error naming it). Licences, as scikit-image's ``skimage.data`` documents them:

* ``astronaut`` -- Eileen Collins, NASA Great Images; public domain (no known copyright).
* ``chelsea`` -- Chelsea the cat, by Stefan van der Walt; CC0.
* ``coffee`` -- espresso cup, courtesy of Pikolo Espresso Bar, by Rachel Michetti; CC0.
* ``rocket`` -- Falcon 9 carrying DSCOVR before launch, SpaceX; released into the public domain.
* ``hubble_deep_field`` -- Hubble eXtreme Deep Field, NASA; public domain.
* ``immunohistochemistry`` -- colonic glands, FHL2 IHC with hematoxylin counterstain, Center for
  Microscopy And Molecular Imaging (CMMI); no known copyright restrictions.

Records have the photo-source shape (``onegen.sources``): ``source_id`` is the name above,
``captions["original"]`` our caption, ``meta`` the file, licence and credit.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from PIL import Image

from onegen.sources import SourceError
from onegen.sources.image_folder import one_line

# name -> (file in skimage/data, caption, licence, credit)
PHOTOS = {
    "astronaut": ("astronaut.png",
                  "Portrait of a smiling astronaut with short brown hair in an orange flight suit, a white helmet "
                  "at her side, an American flag and a model of the space shuttle behind her.",
                  "public domain", "NASA (Eileen Collins)"),
    "chelsea": ("chelsea.png",
                "Close-up of a tabby cat's face with green eyes, a pink nose and long white whiskers.",
                "CC0", "Stefan van der Walt"),
    "coffee": ("coffee.png",
               "A cup of espresso with crema on a red saucer with a teaspoon, on a wooden table.",
               "CC0", "Rachel Michetti, courtesy of Pikolo Espresso Bar"),
    "rocket": ("rocket.jpg",
               "A white rocket standing on its launch pad at dusk between tall lattice towers, lit by "
               "floodlights under a deep blue sky.",
               "public domain", "SpaceX (Falcon 9, DSCOVR launch)"),
    "hubble_deep_field": ("hubble_deep_field.jpg",
                          "Deep space photograph full of distant galaxies, small colourful spirals and dots of "
                          "light on a black background.",
                          "public domain", "NASA, Hubble eXtreme Deep Field"),
    "immunohistochemistry": ("ihc.png",
                             "Microscope image of stained tissue: brown-stained glands with blue cell nuclei "
                             "in a pale background.",
                             "no known copyright restrictions", "Center for Microscopy And Molecular Imaging"),
}


def data_dir() -> Path:
    try:
        return Path(str(resources.files("skimage") / "data"))
    except ModuleNotFoundError as e:
        raise SourceError("sample_photos: scikit-image is not installed (its data folder holds the photos)") from e


class SamplePhotosSource:
    """The photos above, in the order listed."""

    def __init__(self):
        self.root = data_dir()
        self.ids = list(PHOTOS)
        for name in self.ids:
            path = self.root / PHOTOS[name][0]
            if not path.is_file():
                raise SourceError(f"sample_photos: {name}: {path} is missing from the installed scikit-image")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        name = self.ids[index]
        file, caption, licence, credit = PHOTOS[name]
        path = self.root / file
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as e:  # Pillow raises many types on malformed files
            raise SourceError(f"sample_photos: {path}: cannot decode image: {one_line(e)}") from e
        return {"source_id": name, "image": image, "captions": {"original": caption},
                "meta": {"file": file, "license": licence, "credit": credit}}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))
