"""The synthetic reasoning world: seeded problems, traces with labelled steps, small talk."""

from reasonlens.world.families import FAMILIES, Problem, get_family
from reasonlens.world.formatting import ChatFormat, chat_format
from reasonlens.world.generator import World, WorldConfig, answer_text, generate_world, prompt
from reasonlens.world.outcomes import (compute_step_outcomes, is_followed_by_reflection,
                                       is_reflection, outcome_table)

__all__ = ["FAMILIES", "ChatFormat", "Problem", "World", "WorldConfig", "answer_text",
           "chat_format", "compute_step_outcomes", "generate_world", "get_family",
           "is_followed_by_reflection", "is_reflection", "outcome_table", "prompt"]
