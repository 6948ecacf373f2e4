"""Artifact file names, special tokens and paper defaults, defined once."""

from __future__ import annotations

# --- Artifact names under data/runs/<profile>/ -------------------------------------------------
PROBLEMS = "world/problems.parquet"  # one row per problem: family, split, text, answer, ...
STEPS = "world/steps.parquet"  # one row per reasoning step, with ground-truth labels
DOCUMENTS = "world/documents.parquet"  # formatted training texts (traces and plain exchanges)
TOKENIZER_DIR = "tokenizer"  # a transformers tokenizer (save_pretrained)
CONTEXTS = "contexts/{split}.parquet"  # fixed-length contexts, a `tokens` column (SAELens-ready)
REASONING_MODEL_DIR = "models/reasoning"  # HF causal LM (save_pretrained, safetensors)
BASE_MODEL_DIR = "models/base"  # the same LM trained without reasoning traces
MODEL_HISTORY = "models/history.parquet"  # loss curves of both toy models
MODEL_EVAL = "models/eval.json"  # held-out accuracy of both models, with intervals
MODEL_COMPLETIONS = "models/completions.parquet"  # their held-out completions
SAE_DIR = "sae/trained"  # SAELens format (cfg.json + safetensors), reloadable by SAE.load_from_disk
SAE_CHECKPOINTS_DIR = "sae/checkpoints"  # SAELens checkpoints, for resuming an interrupted run
SAE_EVAL = "sae/eval.json"  # held-out reconstruction metrics
SAE_HISTORY = "sae/history.parquet"  # training curves
REASON_SCORES = "scores/reason_scores.parquet"  # one row per feature: ReasonScore and its parts
WINDOW_SHARES = "scores/window_shares.parquet"  # top features: share of top activations in windows
MAX_ACTIVATIONS = "features/max_activations.parquet"  # notebook 05: top features' largest activation
FEATURE_MAP = "features/feature_map.parquet"  # 2-D projection of every decoder direction
DASHBOARDS_DIR = "features/dashboards"  # SAEDashboard HTML pages, feature_<idx>.html
STEERED_COMPLETIONS = "steering/completions.parquet"  # notebook 06: per condition and prompt
EVAL_COMPLETIONS = "evaluation/completions.parquet"  # notebook 07: scored, per condition and problem
EVAL_CONDITIONS = "evaluation/conditions.parquet"  # accuracy, length, word rate with intervals
EVAL_VALIDATION = "evaluation/validation.parquet"  # notebook 07: strengths tried on val problems
EVAL_DECISION = "evaluation/decision_features.parquet"  # each feature's AUC for the reflect decision
EVAL_HEADLINE = "evaluation/headline.json"  # the chosen feature and strength on test, and a control
EVAL_SITES = "evaluation/sites.parquet"  # notebook 07: the top feature x2 at each steering site
MODEL_DIFF = "evaluation/model_diff.parquet"  # top features on the base vs the reasoning model
INJECTION = "evaluation/injection.parquet"  # token-injection control: activations per text
INJECTION_EFFECTS = "evaluation/injection_effects.parquet"  # its effect sizes
HARNESS_RESULTS = "evaluation/lm_eval.json"  # lm-evaluation-harness accuracy, steered and not
STEP_SAE_DIR = "step_sae/{mode}/model"  # notebook 08, per mode (ours/reference): StepSAE.save
STEP_SAE_CHECKPOINTS_DIR = "step_sae/{mode}/checkpoints"  # phase-1 checkpoints, for resuming
STEP_SAE_HISTORY = "step_sae/{mode}/history.parquet"  # phase-1 and phase-2 training curves
STEP_SAE_EVAL = "step_sae/{mode}/eval.json"  # held-out reconstruction, sparsity, decodings
STEP_PROBES = "step_sae/probes.parquet"  # both modes' probes: features, task, metric, value
STEP_PATTERNS = "step_sae/{mode}/patterns.parquet"  # N2G patterns of the chosen latents
STEP_PATTERN_EVAL = "step_sae/{mode}/pattern_eval.parquet"  # their held-out precision/recall
STEP_LABELS = "step_sae/{mode}/labels.parquet"  # reference mode: a label per latent (LLM/offline)
STEP_VOTING = "step_sae/{mode}/voting.json"  # greedy, majority and probe-weighted voting
MANIFEST_SUFFIX = ".manifest.json"  # beside every artifact: the config that made it

# --- Special tokens of the synthetic world's tokenizer -------------------------------------------
BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, THINK_OPEN, THINK_CLOSE, USER, ASSISTANT)

# --- DeepSeek-R1 chat template (Galichin et al., 2025, Sec. 3; the R1-Distill tokenizer) ---------
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"

# --- The paper's reasoning vocabulary (Galichin et al., 2025, Sec. 3.2) ----------------------------
REASONING_WORDS = (
    "alternatively", "hmm", "maybe", "wait", "perhaps",
    "let me", "therefore", "however", "but", "another",
)
# The strings the paper's code scores (AIRI-Institute/SAE-Reasoning, extraction/reason_tokens.json):
# the lower-case and capitalised forms, with and without a leading space, of the first eight words,
# and only "But" and "Another" of the last two (a bare " but" is among the commonest tokens of
# English). Grouped by ``s.lstrip().lower()``: 34 strings, 10 groups.
REASON_TOKENS = tuple(
    form for word in REASONING_WORDS[:8]
    for form in (word, " " + word, word.capitalize(), " " + word.capitalize())
) + ("But", "Another")
