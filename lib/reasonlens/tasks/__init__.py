"""The paper's three benchmarks as lm-evaluation-harness tasks, shipped with the package.

``aime2024_nofigures``, ``math-500`` and ``openai_gpqa_diamond`` (the reference's task names) live
as YAML files in this folder, with their Python in ``utils.py``; ``reasonlens-lm-eval`` and
``harness.run_harness`` add the folder to the harness's task paths (``TASKS_DIR``).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
TASK_NAMES = ("aime2024_nofigures", "math-500", "openai_gpqa_diamond")
