"""Step-level sparse autoencoder (Yang et al., 2026, arXiv 2603.03031) and analyses (notebook 08).

``data`` turns reasoning traces into ``context <sep> step <eos>`` examples, ``readers`` reads the
paper's data sets (GSM8K, Numina, OpenCodeInstruct JSON Lines) with the reference code's step
splits and token limits, ``model`` is the SAE (encoder LM, sparse bottleneck, soft prefix,
decoder LM, and the phase-2 Gaussian context head; ``StepSAEConfig.reference`` gives the reference
code's rules), ``training`` trains it (checkpoints, resume, DDP; ``StepSAETrainConfig.reference``
is the reference optimiser and schedule), ``inference`` runs it (latents, reconstruction, greedy
decoding from own, sampled or edited latents), ``probes`` reads step properties off its latents
(ours: logistic probes on ground truth; the reference's: its labels and baselines, trained by
``classifier``, the reference's MLP), ``n2g`` mines token patterns that explain latents
(``n2g_reference`` as the reference mines them, ``n2g_labels`` labels them through an LLM or an
offline stand-in), ``voting`` weights sampled solutions by probe-predicted step correctness
(``answers_reference`` reads answers and steps as the reference's voting does), and
``distributed`` is the ``torchrun`` entry point.
"""
