"""Synthetic city blocks with exact depth: procedural scenes, a ray-casting renderer, camera paths, collections.

``generate_sample`` is what a training data loader calls; ``write_collection`` (and
``python -m model.synthetic``) writes the same data as a collection folder.
"""

from .collection import generate_sample, write_collection
from .paths import PATH_KINDS, intrinsics_for, look_at, make_path
from .render import camera_rays, cast_rays, render, render_depth
from .scene import SCENE_KINDS, Scene, make_scene, solid_at

__all__ = ["PATH_KINDS", "SCENE_KINDS", "Scene", "camera_rays", "cast_rays", "generate_sample", "intrinsics_for",
           "look_at", "make_path", "make_scene", "render", "render_depth", "solid_at", "write_collection"]
