"""SynthCity: a procedural street-scene VPR benchmark with pixel-exact Cityscapes labels.

``generate_dataset`` writes the standard VPR folder layout; ``write_preview`` a contact sheet;
``render_view`` renders a single view for tests and tools.
"""
from .conditions import Condition, Look, fixed_condition, make_look, sample_condition
from .generate import PRESETS, VERSION, Preset, generate_dataset, get_preset, render_shot
from .preview import write_preview
from .render import Camera
from .scene import render_view
from .world import CityConfig, World, build_world, street_places

__all__ = [
    "PRESETS", "VERSION", "Camera", "CityConfig", "Condition", "Look", "Preset", "World", "build_world",
    "fixed_condition", "generate_dataset", "get_preset", "make_look", "render_shot", "render_view",
    "sample_condition", "street_places", "write_preview",
]
