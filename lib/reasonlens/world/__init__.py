"""The synthetic reasoning world: seeded problems, traces with labelled steps, small talk."""

from reasonlens.world.families import FAMILIES, Problem, get_family
from reasonlens.world.formatting import ChatFormat, chat_format
from reasonlens.world.generator import World, WorldConfig, answer_text, generate_world, prompt

__all__ = ["FAMILIES", "ChatFormat", "Problem", "World", "WorldConfig", "answer_text",
           "chat_format", "generate_world", "get_family", "prompt"]
