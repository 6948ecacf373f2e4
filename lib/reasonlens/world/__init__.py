"""The synthetic reasoning world: seeded problems, traces with labelled steps, small talk."""

from reasonlens.world.families import FAMILIES, Problem, get_family
from reasonlens.world.generator import World, WorldConfig, answer_text, generate_world, prompt

__all__ = ["FAMILIES", "Problem", "World", "WorldConfig", "answer_text", "generate_world",
           "get_family", "prompt"]
